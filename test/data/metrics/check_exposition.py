#!/usr/bin/env python3
"""The figures in exposition.prom against values derived by hand from what
test/unit/test_metrics.c (test_metrics_exposition_matches_expected) feeds the registry,
so a wrong count in the writer cannot be blessed by rewriting the expected file.
Usage: check_exposition.py [FILE]"""
import os
import sys

# test_requests_total: 41 metrics_inc + add 1 = 42; add -5 (a counter never goes down)
# and add NaN are ignored.
# test_decisions_total: v1 add 3 then inc = 4; v2 inc = 1.
# test_latency_seconds, bounds 5e-05 0.001 0.25 1, observations 0.00001 0.00005 0.0005 2:
# cumulative <= 5e-05: 2 (the bound itself is in), <= 0.001: 3, <= 0.25: 3, <= 1: 3,
# +Inf: 4; sum 0.00001 + 0.00005 + 0.0005 + 2 = 2.00056.
# test_service_busy: the collector's 12 and 0.5.
EXPECTED = {
    'test_requests_total': 42,
    'test_decisions_total{rule="per-client \\"burst\\"",action="reject"}': 4,
    'test_decisions_total{rule="back\\\\slash\\nnewline",action="defer"}': 1,
    'test_saturation_ratio': 0.875,
    'test_latency_seconds_bucket{le="5e-05"}': 2,
    'test_latency_seconds_bucket{le="0.001"}': 3,
    'test_latency_seconds_bucket{le="0.25"}': 3,
    'test_latency_seconds_bucket{le="1"}': 3,
    'test_latency_seconds_bucket{le="+Inf"}': 4,
    'test_latency_seconds_sum': 0.00001 + 0.00005 + 0.0005 + 2,
    'test_latency_seconds_count': 4,
    'test_service_busy{service="smtp/inet/25"}': 12,
    'test_service_busy{service="submission/inet/587"}': 0.5,
}


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else \
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "exposition.prom")
    got = {}
    with open(path) as f:
        for line in f.read().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                got[name] = float(value)
    errs = []
    for name, v in EXPECTED.items():
        if name not in got:
            errs.append("%s missing" % name)
        elif abs(got[name] - v) > 1e-9 * max(1, abs(v)):
            errs.append("%s = %r, derived %r" % (name, got[name], v))
    for name in sorted(set(got) - set(EXPECTED)):
        errs.append("%s not expected" % name)
    print("%s: %s" % (os.path.basename(path), "figures ok" if not errs else "WRONG"))
    for e in errs:
        print("  " + e)
    return 1 if errs else 0


if __name__ == "__main__":
    sys.exit(main())
