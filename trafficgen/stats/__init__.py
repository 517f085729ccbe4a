"""Recording a run (counters, histograms, merge) apart from showing it (progress, reports)."""
