"""The policy: model (frozen values), loader (TOML to model), decide (pure answers), watcher (reloads)."""

from smartsink.policy.loader import PolicyError, load_policy, parse_policy
from smartsink.policy.model import DomainRules, Latency, ListenerRules, Outcome, Policy, Rate, Reply

__all__ = [
    "DomainRules",
    "Latency",
    "ListenerRules",
    "Outcome",
    "Policy",
    "PolicyError",
    "Rate",
    "Reply",
    "load_policy",
    "parse_policy",
]
