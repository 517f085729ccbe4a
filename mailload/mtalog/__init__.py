"""A production MTA's own logs read as mail events: KumoMTA's JSON records, Postfix's and Exim's log lines.

Each format has a pure parser (a line in, typed events out: `events.py`); `aggregate.py` folds the events into
bounded counts and distributions; `read.py` does the I/O (files, directories, gzip and zstd, the progress bar).
trafficgen derives a workload from the aggregate, smartsink a policy.
"""
