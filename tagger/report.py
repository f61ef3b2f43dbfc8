"""A model card as Markdown: what a person reads after training (Prefect artifact, report.md)."""

from __future__ import annotations


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def render_card_markdown(card: dict, *, worst: int = 10) -> str:
    m = card["metrics"]
    lines = [
        f"# Model {card['version']}",
        "",
        f"Backbone **{card['backbone']}** at {card['image_size']} px, trained on "
        f"{card['data']['train']} products, validated on {card['data']['validation']} "
        f"(data snapshot `{card['data']['snapshot']}`) in {card['training']['seconds']:.0f} s "
        f"on {card['training']['device']} x{card['training']['world_size']}.",
        "",
        f"| micro-F1 | macro-F1 | mAP | Hamming loss |",
        f"|---|---|---|---|",
        f"| {_f(m['micro_f1'])} | {_f(m['macro_f1'])} | {_f(m['mAP'])} | {_f(m['hamming_loss'])} |",
        "",
        f"_{m.get('split', 'validation split')}_",
        "",
        "## Per attribute",
        "",
        "| attribute | kind | accuracy | coverage | macro-F1 | products with a label |",
        "|---|---|---|---|---|---|",
    ]
    kinds = {a["name"]: a["kind"] for a in card["taxonomy"]["attributes"]}
    for attr, am in m["per_attribute"].items():
        lines.append(f"| {attr} | {kinds.get(attr, '')} | {_f(am.get('accuracy'))} | "
                     f"{_f(am.get('coverage'))} | {_f(am.get('macro_f1'))} | {am.get('known', '-')} |")
    values = [(attr, v, vm) for attr, vals in m["per_value"].items() for v, vm in vals.items()
              if vm["support"]]
    values.sort(key=lambda t: (t[2]["f1"], -t[2]["support"]))
    lines += ["", f"## Weakest {min(worst, len(values))} values (F1)", "",
              "| attribute | value | precision | recall | F1 | AP | support | threshold |",
              "|---|---|---|---|---|---|---|---|"]
    for attr, v, vm in values[:worst]:
        thr = card["thresholds"].get(attr, {}).get(v)
        lines.append(f"| {attr} | {v} | {_f(vm['precision'])} | {_f(vm['recall'])} | {_f(vm['f1'])} "
                     f"| {_f(vm['ap'])} | {vm['support']} | {_f(thr)} |")
    return "\n".join(lines) + "\n"
