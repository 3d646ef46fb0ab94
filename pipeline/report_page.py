"""The ``--report`` HTML page: one self-contained file (inline CSS and SVG, no script).

It works offline and from any file share: nothing is loaded from anywhere. Each
segment gets a bar chart of entries (up) and exits (down, by cause) per snapshot, with
its table beside it; the mass-exit verdicts, the activation figures and the dead
letters come first.
"""

from __future__ import annotations

from html import escape
from typing import Any

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d232a;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:28px 0 8px}
.note{padding:8px 12px;border-radius:4px;background:#fff4d6;border:1px solid #e8c45c}
.bad{background:#fde2e1;border-color:#d9534f}
table{border-collapse:collapse;margin:4px 0} td,th{padding:2px 6px;border-bottom:1px solid #ddd}
th{text-align:left;background:#f3f5f7} td.n{text-align:right;font-variant-numeric:tabular-nums}
.segment{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}
.legend span{display:inline-block;margin-right:12px}
.sw{display:inline-block;width:10px;height:10px;margin-right:4px}
"""
# Entries, then exits by cause (status, disappearance, tombstone).
_COLOURS = {
    "realized": "#2e8b57",
    "exited_by_status": "#c0392b",
    "exited_by_disappearance": "#e67e22",
    "exited_by_tombstone": "#7f3c8d",
}
_LABELS = {
    "realized": "entries",
    "exited_by_status": "exits by status",
    "exited_by_disappearance": "exits by disappearance",
    "exited_by_tombstone": "exits by tombstone",
}


def render_page(report: dict[str, Any]) -> str:
    """The whole HTML page of a report (see :func:`pipeline.report.build_report`)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>Segment events report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Segment events report</h1>",
        f"<p>Generated {escape(report['generated_at'])} from "
        f"{escape(', '.join(report['inputs']))}</p>",
    ]
    if report["dry_run"]:
        parts.append(
            '<p class="note">Dry run: nothing was sent. The entries, exits and '
            "activation figures are what a real run would send.</p>"
        )
    parts += _verdicts(report)
    parts += _activation(report)
    parts += _dead_letters(report)
    parts.append("<h2>Entries and exits per segment</h2>")
    parts.append(_legend())
    for segment in report["segments"]:
        parts += _segment(segment)
    parts += _summary(report)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{value:,}</td>'
            if isinstance(value, int) and not isinstance(value, bool)
            else f"<td>{escape(str(value))}</td>"
            for value in row
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _verdicts(report: dict[str, Any]) -> list[str]:
    guard = report["mass_exit_guard"]
    stops = [
        s["snapshot"]
        for s in report["snapshots"]
        if s["mass_exit_guard"]["verdict"].endswith("run stops")
    ]
    out = ["<h2>Snapshots and the mass-exit guard</h2>"]
    if stops:
        out.append(
            '<p class="note bad">The mass-exit guard stops a run at '
            f"{escape(', '.join(stops))}: more than {guard['max_exit_fraction']:g} of the "
            "tracked profiles are missing. Check the export for truncation.</p>"
        )
    rows = [
        [
            s["snapshot"],
            s["records"],
            s["events"],
            s["events_excluded_no_identity"],
            s["mass_exit_guard"]["tracked"],
            s["mass_exit_guard"]["absent"],
            f"{s['mass_exit_guard']['fraction']:.3f}",
            s["mass_exit_guard"]["verdict"],
        ]
        for s in report["snapshots"]
    ]
    out.append(
        _table(
            [
                "snapshot",
                "records",
                "events",
                "excluded (no identity)",
                "tracked before",
                "missing",
                "fraction",
                "verdict",
            ],
            rows,
        )
    )
    return out


def _activation(report: dict[str, Any]) -> list[str]:
    activation = report["activation"]
    out = [
        "<h2>Activation</h2>",
        f"<p>Profiles activated: <b>{activation['profiles_activated']:,}</b>; failed: "
        f"<b>{activation['profiles_failed']:,}</b></p>",
    ]
    rows = [
        [i["namespace"], i["activated"], i["failed"], i["excluded"]]
        for i in activation["identities"]
    ]
    if rows:
        out.append(_table(["identity namespace", "activated", "failed", "excluded"], rows))
    return out


def _dead_letters(report: dict[str, Any]) -> list[str]:
    letters = report["dead_letters"]
    if not letters:
        return ["<h2>Dead letters</h2>", "<p>None.</p>"]
    rows = [[d["stage"], d["reason"], d["count"]] for d in letters]
    return ["<h2>Dead letters</h2>", _table(["stage", "reason", "count"], rows)]


def _legend() -> str:
    items = "".join(
        f'<span><i class="sw" style="background:{_COLOURS[k]}"></i>{escape(_LABELS[k])}</span>'
        for k in _COLOURS
    )
    return f'<p class="legend">{items}</p>'


def _segment(segment: dict[str, Any]) -> list[str]:
    title = segment["name"] or segment["id"]
    label = f"{title} ({segment['namespace']}/{segment['id']})" if segment["name"] else title
    rows = [
        [
            r["snapshot"][:10] + (" (baseline)" if r["baseline"] else ""),
            r["realized"],
            r["exited"],
            r["exited_by_status"],
            r["exited_by_disappearance"],
            r["exited_by_tombstone"],
            r["members_after"],
        ]
        for r in segment["snapshots"]
    ]
    table = _table(
        [
            "snapshot",
            "entries",
            "exits",
            "by status",
            "by disappearance",
            "by tombstone",
            "members",
        ],
        rows,
    )
    return [
        f"<h3>{escape(label)}</h3>",
        f'<div class="segment">{_chart(segment)}{table}</div>',
    ]


def _chart(segment: dict[str, Any], width: int = 440, height: int = 220) -> str:
    """Bars per snapshot: entries above the axis, exits (stacked by cause) below."""
    rows = segment["snapshots"]
    pad_left, pad_bottom, pad_top = 56, 36, 12
    top = max([r["realized"] for r in rows] + [1])
    bottom = max([r["exited"] for r in rows] + [1])
    plot_h = height - pad_bottom - pad_top
    axis_y = pad_top + plot_h * top / (top + bottom)
    scale = plot_h / (top + bottom)
    slot = (width - pad_left - 8) / max(len(rows), 1)
    bar = max(min(slot * 0.6, 48), 2)
    label = escape(segment["name"] or segment["id"])
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="entries and exits per snapshot of {label}">',
        f'<line x1="{pad_left}" y1="{axis_y:.1f}" x2="{width - 4}" y2="{axis_y:.1f}" '
        'stroke="#555"/>',
        f'<text x="{pad_left - 6}" y="{pad_top + 10}" text-anchor="end" font-size="11">'
        f"+{top:,}</text>",
        f'<text x="{pad_left - 6}" y="{height - pad_bottom}" text-anchor="end" '
        f'font-size="11">-{bottom:,}</text>',
    ]
    for index, row in enumerate(rows):
        x = pad_left + index * slot + (slot - bar) / 2
        h = row["realized"] * scale
        out.append(_rect(x, axis_y - h, bar, h, "realized", row))
        y = axis_y
        for kind in ("exited_by_status", "exited_by_disappearance", "exited_by_tombstone"):
            h = row[kind] * scale
            if h:
                out.append(_rect(x, y, bar, h, kind, row))
                y += h
        if len(rows) <= 16 or index % max(len(rows) // 8, 1) == 0:
            out.append(
                f'<text x="{x + bar / 2:.1f}" y="{height - pad_bottom + 14}" '
                f'text-anchor="middle" font-size="10">{escape(row["snapshot"][:10])}</text>'
            )
    out.append("</svg>")
    return "".join(out)


def _rect(x: float, y: float, w: float, h: float, kind: str, row: dict[str, Any]) -> str:
    tip = f"{row['snapshot']}: {row[kind]:,} {_LABELS[kind]}"
    return (
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
        f'fill="{_COLOURS[kind]}"><title>{escape(tip)}</title></rect>'
    )


def _summary(report: dict[str, Any]) -> list[str]:
    rows = [[label, value] for label, value in report["summary"].items()]
    return ["<h2>Run summary</h2>", _table(["", "value"], rows)]
