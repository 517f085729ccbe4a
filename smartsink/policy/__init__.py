"""The policy: model (frozen values), loader (TOML to model, with values and problems), decide (pure answers),
watcher (reloads)."""

from smartsink.policy.loader import load_policy, parse_policy
from smartsink.policy.model import DomainRules, Latency, ListenerRules, Outcome, Policy, Rate, Reply
from smartsink.policy.problems import PolicyError

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
