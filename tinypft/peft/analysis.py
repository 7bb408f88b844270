"""Which biases move during BitFit? (Ben Zaken et al., 2022, section 4 / figure 1)

For every bias vector b of size dim (component c, layer l), compare its value before (b0) and
after (bF) fine-tuning:

    change(c, l) = (1 / dim) * || b0 - bF ||_1        the mean absolute change of its entries

The paper plots these as a heatmap (rows: components, columns: layers) and finds that the query
bias b_q and the FFN's intermediate bias (``fc_in`` here, b_m2 there) change the most.

    initial = model.state_dict()      # before training
    ...train...
    changes = bias_change(initial, model.state_dict())
    print(format_bias_change(changes))
    plot_bias_change(changes, "bias_change.png")
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

# parameter name (with any prefix, e.g. "base_model.") -> component; the layer is the first group
BIAS_PATTERN = re.compile(
    r"(?:^|\.)blocks\.(\d+)\.(attn\.[qkvo]_proj|mlp\.fc_in|mlp\.fc_out|ln_1|ln_2)\.bias$"
)
COMPONENT_OF = {
    "attn.q_proj": "q",
    "attn.k_proj": "k",
    "attn.v_proj": "v",
    "attn.o_proj": "o",
    "mlp.fc_in": "fc_in",
    "mlp.fc_out": "fc_out",
    "ln_1": "ln_1",
    "ln_2": "ln_2",
}
COMPONENT_ORDER: tuple[str, ...] = ("q", "k", "v", "o", "fc_in", "fc_out", "ln_1", "ln_2")


def bias_change(
    initial_state: dict[str, np.ndarray], final_state: dict[str, np.ndarray]
) -> dict[tuple[str, int], float]:
    """(component, layer) -> (1/dim) ||b0 - bF||_1 for every per-layer bias in both state dicts.

    State dicts of a GPT or of a PeftModel (names with a "base_model." prefix) both work; the final
    LayerNorm's bias (not per layer) is left out of the table.
    """
    changes: dict[tuple[str, int], float] = {}
    for name, before in initial_state.items():
        match = BIAS_PATTERN.search(name)
        if match is None or name not in final_state:
            continue
        b0 = np.asarray(before, dtype=np.float64)  # (dim,)
        b_final = np.asarray(final_state[name], dtype=np.float64)  # (dim,)
        changes[(COMPONENT_OF[match.group(2)], int(match.group(1)))] = float(
            np.abs(b0 - b_final).sum() / b0.size
        )
    if not changes:
        raise ValueError("bias_change: no per-layer bias (blocks.{i}....bias) is in both state dicts")
    return changes


def bias_change_table(changes: dict[tuple[str, int], float]) -> tuple[list[str], list[int], np.ndarray]:
    """The changes as a table: (components = rows, layers = columns, values (rows, columns));
    a missing entry is NaN."""
    components = [c for c in COMPONENT_ORDER if any(key[0] == c for key in changes)]
    layers = sorted({layer for _, layer in changes})
    table = np.full((len(components), len(layers)), np.nan)  # (components, layers)
    for (component, layer), value in changes.items():
        table[components.index(component), layers.index(layer)] = value
    return components, layers, table


def format_bias_change(changes: dict[tuple[str, int], float]) -> str:
    """A plain-text table: one row per component, one column per layer."""
    components, layers, table = bias_change_table(changes)
    lines = ["component " + "".join(f"{f'L{layer}':>10}" for layer in layers)]
    for component, row in zip(components, table):
        lines.append(f"{component:<10}" + "".join(f"{value:>10.2e}" for value in row))
    return "\n".join(lines)


def plot_bias_change(
    changes: dict[tuple[str, int], float],
    path: str | Path,
    title: str = "BitFit: bias change (1/dim)·||b0 − bF||₁",
) -> Path:
    """Save the changes as a heatmap (rows components, columns layers) to ``path``; returns the path.

    Drawn on matplotlib's Agg canvas directly, so no display is needed and pyplot's state is untouched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    components, layers, table = bias_change_table(changes)
    table = np.concatenate([table, np.nanmean(table, axis=1, keepdims=True)], axis=1)  # + an "avg" column
    fig = Figure(figsize=(1.5 + 0.6 * len(layers), 1.2 + 0.45 * len(components)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(table, cmap="Blues", aspect="auto")  # (components, layers + 1)
    ax.set_xticks(range(len(layers) + 1), [str(layer) for layer in layers] + ["avg"])
    ax.set_yticks(range(len(components)), components)
    ax.set_xlabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
