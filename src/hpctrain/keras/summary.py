"""``model.summary()``: Keras 3's table of layers, output shapes and parameter counts."""

from __future__ import annotations

COLUMNS = (("Layer (type)", 33, "<"), ("Output Shape", 24, "<"), ("Param #", 15, ">"))


def _human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} GB"


def _row(cells, left="│", middle="│", right="│") -> str:
    parts = [f" {str(cell):{align}{width - 2}} " for cell, (_, width, align) in zip(cells, COLUMNS)]
    return left + middle.join(parts) + right


def _rule(left: str, middle: str, right: str, fill: str) -> str:
    return left + middle.join(fill * width for _, width, _ in COLUMNS) + right


def _shape_text(shape) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def summary_table(model) -> str:
    layers = model.layers
    shapes = model.output_shapes() if hasattr(model, "output_shapes") else [None] * len(layers)
    lines = [f'Model: "{model.name}"', _rule("┏", "┳", "┓", "━"),
             _row([name for name, _, _ in COLUMNS], "┃", "┃", "┃"), _rule("┡", "╇", "┩", "━")]
    for index, (layer, shape) in enumerate(zip(layers, shapes)):
        params = f"{layer.count_params():,}" if getattr(layer, "built", True) else "0 (unbuilt)"
        lines.append(_row([f"{layer.name} ({type(layer).__name__})", _shape_text(shape), params]))
        if index < len(layers) - 1:
            lines.append(_rule("├", "┼", "┤", "─"))
    lines.append(_rule("└", "┴", "┘", "─"))
    trainable = sum(w.numel() for w in model.parameters() if w.requires_grad)
    frozen = sum(w.numel() for w in model.parameters() if not w.requires_grad)
    total = trainable + frozen
    # Keras reports sizes assuming 4-byte float32 weights.
    lines += [f" Total params: {total:,} ({_human_bytes(4 * total)})",
              f" Trainable params: {trainable:,} ({_human_bytes(4 * trainable)})",
              f" Non-trainable params: {frozen:,} ({_human_bytes(4 * frozen)})"]
    return "\n".join(lines)
