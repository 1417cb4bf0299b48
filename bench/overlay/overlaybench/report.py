"""Turns per-round samples into the results table, the ratio table and the markdown file.

Input: for each contender, a list of per-round dicts {metric: value or None}. Output:
text only; it measures nothing. Medians are over rounds; "(lo–hi)" is the min–max.
"""
import statistics

# (key, column heading, decimals, higher_is_better)
METRICS = [
    ("tcp1", "TCP ×1 Gbit/s", 2, True),
    ("tcp4", "TCP ×4 Gbit/s", 2, True),
    ("udp_kpps", "UDP 64 B kpps", 1, True),
    ("rtt", "RTT ms", 3, False),
    ("rtt_added", "+RTT ms", 3, False),
    ("cpu_tcp1", "CPU % ×1", 0, False),
    ("cpu_per_gbps_tcp1", "CPU %/Gbit/s ×1", 0, False),
    ("cpu_per_gbps_tcp4", "CPU %/Gbit/s ×4", 0, False),
    ("cpu_udp", "CPU % UDP", 0, False),
    ("cpu_ping", "CPU % ping", 0, False),
]
RATIO_METRICS = ["tcp1", "tcp4", "udp_kpps", "rtt_added", "cpu_per_gbps_tcp1",
                 "cpu_per_gbps_tcp4"]


def derive(rounds_by_key):
    """Adds the per-round derived metrics: CPU per Gbit/s and RTT added over raw."""
    raw = rounds_by_key.get("raw", [])
    for key, rounds in rounds_by_key.items():
        for i, s in enumerate(rounds):
            for t in ("tcp1", "tcp4"):
                cpu, gbps = s.get(f"cpu_{t}"), s.get(t)
                s[f"cpu_per_gbps_{t}"] = cpu / gbps if cpu is not None and gbps else None
            raw_rtt = raw[i].get("rtt") if i < len(raw) else None
            s["rtt_added"] = (s["rtt"] - raw_rtt
                              if key != "raw" and s.get("rtt") is not None
                              and raw_rtt is not None else None)
            s["udp_kpps"] = s["udp"] / 1e3 if s.get("udp") is not None else None


def summary(rounds, metric):
    vals = [s[metric] for s in rounds if s.get(metric) is not None]
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


def fmt_cell(stat, decimals, show_range):
    if stat is None:
        return "—"
    med, lo, hi = stat
    cell = f"{med:.{decimals}f}"
    if show_range and hi > lo:
        cell += f" ({lo:.{decimals}f}–{hi:.{decimals}f})"
    return cell


def md_table(header, rows, left=(0,)):
    """A markdown table; columns in `left` are left-aligned, numbers right-aligned."""
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i in left else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def results_table(contenders, rounds_by_key, unavailable):
    header = ["contender"] + [m[1] for m in METRICS] + ["RSS MiB before → after"]
    rows = []
    for c in contenders:
        if c.key in unavailable:
            rows.append([c.label, "not available"] + [""] * len(METRICS))
            continue
        rounds = rounds_by_key.get(c.key, [])
        row = [c.label]
        for key, _, dec, _ in METRICS:
            if c.key == "raw" and (key.startswith("cpu") or key == "rtt_added"):
                row.append("—")
            else:
                row.append(fmt_cell(summary(rounds, key), dec, len(rounds) > 1))
        before, after = summary(rounds, "rss_before"), summary(rounds, "rss_after")
        row.append(f"{before[0]:.1f} → {after[0]:.1f}" if before and after else "—")
        rows.append(row)
    return md_table(header, rows)


def ratio_table(contenders, rounds_by_key, unavailable):
    """vpnd's median divided by each other contender's median, metric by metric."""
    heads = {m[0]: m for m in METRICS}
    header = ["vpnd ÷"] + [f"{heads[k][1]} ({'↑' if heads[k][3] else '↓'} better)"
                           for k in RATIO_METRICS]
    vpnd_rounds = rounds_by_key.get("vpnd")
    rows = []
    for c in contenders:
        if c.key.startswith("vpnd"):
            continue
        row = [c.label]
        for k in RATIO_METRICS:
            a = summary(vpnd_rounds, k) if vpnd_rounds and "vpnd" not in unavailable else None
            b = summary(rounds_by_key.get(c.key, []), k) if c.key not in unavailable else None
            row.append(f"{a[0] / b[0]:.2f}×" if a and b and b[0] else "n/a")
        rows.append(row)
    return md_table(header, rows)


def echo_floor(raw_rounds):
    """The line that states the wake-up floor measured in the raw turns."""
    stat = summary(raw_rounds, "echo")
    if stat is None:
        return "Userspace UDP echo over the raw veth: not measured."
    return ("Userspace UDP echo over the raw veth (udpecho.py: two process wake-ups per round "
            f"trip, no overlay): **{fmt_cell(stat, 3, len(raw_rounds) > 1)} ms**, against ping's "
            f"{fmt_cell(summary(raw_rounds, 'rtt'), 3, len(raw_rounds) > 1)} ms. The difference "
            "is what waking sleeping processes costs on this machine; an overlay whose daemons "
            "sleep between packets pays it (and ping's own wake-up) on top of its data path.")


def samples_section(contenders, rounds_by_key):
    keys = ["tcp1", "tcp4", "udp_kpps", "rtt", "echo", "cpu_tcp1", "cpu_tcp4", "cpu_udp",
            "cpu_ping", "rss_before", "rss_after", "foreign"]
    header = ["contender", "round"] + keys[:-1] + ["others' CPU %", "errors"]
    rows = []
    for c in contenders:
        for i, s in enumerate(rounds_by_key.get(c.key, [])):
            rows.append([c.label, str(s.get("round", i + 1))] +
                        ["—" if s.get(k) is None else f"{s[k]:.3g}" for k in keys] +
                        ["; ".join(s.get("errors", [])) or ""])
    return md_table(header, rows, left=(0, len(header) - 1))
