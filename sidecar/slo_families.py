"""The tracker's SLO states as Prometheus families, computed at scrape time."""

from __future__ import annotations

import time
from typing import Iterable

from prometheus_client.core import GaugeMetricFamily, Metric

from .slo_tracker import SloTracker


class SloCollector:
    """prometheus_client custom collector over the SLO tracker."""

    def __init__(self, tracker: SloTracker):
        self.tracker = tracker

    def collect(self) -> Iterable[Metric]:
        states = self.tracker.states(time.time())
        # The service's identity labels (e.g. model_name) on every series, as the rules' recordings carry them.
        # And a sliced SLO's slice label (model: the tenant; "other" for the tenants the spec does not name).
        extra = [label for label in self.tracker.spec.identity if any(label in s.identity for s in states)]
        sliced = sorted({label for state in states for label in state.slo.slice})
        per_slo, per_window = ["slo", *sliced, *extra], ["slo", "window", *sliced, *extra]
        ratio = GaugeMetricFamily("slo_sli_error_ratio", "Share of the SLI's events that were errors over the "
                                  "window: 0 without events, absent until the SLI's series are seen.",
                                  labels=per_window)
        events = GaugeMetricFamily("slo_sli_events", "SLI events (requests) seen in the window.", labels=per_window)
        # One series a window, not one per SLO and window: whether the sidecar has seen a whole window
        # depends on the window alone (a sliced spec has dozens of SLOs, the same ten windows).
        filled = GaugeMetricFamily("slo_window_filled", "1 once the sidecar has data for the whole window; "
                                   "before that every SLO's figures for it cover only what it has seen.",
                                   labels=["window", *extra])
        filled_windows: set[str] = set()
        objective = GaugeMetricFamily("slo_objective_ratio", "The SLO's objective, 0-1.", labels=per_slo)
        remaining = GaugeMetricFamily("slo_error_budget_remaining_ratio", "Share of the period's error budget "
                                      "left (negative once overspent).", labels=per_slo)
        firing = GaugeMetricFamily("slo_alert_firing", "1 while the multi-window burn-rate condition of the "
                                   "SLO's page or ticket alert holds (no `for:`).",
                                   labels=["slo", "severity", "tier", *sliced, *extra])
        # No burn-rate family: it is the error ratio over the budget (1 - objective), both served; ten
        # windows of it per SLO and tenant were a third of the sidecar's SLO series (the series budget).
        for state in states:
            name = state.slo.name
            who = [*(state.slo.slice.get(label, "") for label in sliced), *(state.identity.get(label, "") for label in extra)]
            objective.add_metric([name, *who], state.slo.objective_ratio)
            if state.budget_remaining is not None:
                remaining.add_metric([name, *who], state.budget_remaining)
            for window in state.windows:
                labels = [name, window.window, *who]
                events.add_metric(labels, window.events)
                if window.window not in filled_windows:
                    filled_windows.add(window.window)
                    filled.add_metric([window.window, *who[len(sliced):]], float(window.filled))
                if window.error_ratio is not None:
                    ratio.add_metric(labels, window.error_ratio)
            for tier, holds in state.firing.items():
                firing.add_metric([name, getattr(state.slo, tier).severity, tier, *who], float(holds))
        yield from (ratio, events, filled, objective, remaining, firing)
