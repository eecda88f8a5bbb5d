"""Which export formats exist, their precisions, and which `export` options each reads: the config checks a profile
against this at load, before any training (a mistyped format, or an option that no listed format reads, is a config
error, not a surprise after an hour of training). deploy/formats.py implements one row per name here; a test holds the
two equal and checks that each exporter reads only the options its row declares."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Options every listed format shares: which formats, and the INT8 calibration set and gate (read by any int8 export).
GENERAL_OPTIONS = frozenset({"formats"})
INT8_OPTIONS = frozenset({"calibration_images", "int8_gate"})


@dataclass(frozen=True)
class FormatSpec:
    """A format's precisions, and the options it reads: always, and only when it exports that precision."""

    precisions: tuple[str, ...]
    options: frozenset[str] = frozenset()
    by_precision: tuple[tuple[str, frozenset[str]], ...] = ()

    def options_for(self, precisions: Iterable[str]) -> frozenset[str]:
        chosen = set(precisions)
        taken = set(self.options)
        if "int8" in chosen:
            taken |= INT8_OPTIONS
        for precision, options in self.by_precision:
            if precision in chosen:
                taken |= options
        return frozenset(taken)


FORMAT_SPECS: dict[str, FormatSpec] = {
    "onnx": FormatSpec(("fp32", "int8"), frozenset({"opset"}),
                       (("int8", frozenset({"int8_calibration", "int8_depthwise_fp32"})),)),
    "ncnn": FormatSpec(("fp32", "fp16", "int8"), frozenset(),
                       (("fp16", frozenset({"ncnn_fp16_arithmetic_off"})),
                        ("int8", frozenset({"int8_calibration", "int8_depthwise_fp32", "ncnn_int8_float_layers"})))),
    "coreml": FormatSpec(("fp32", "fp16"), frozenset({"max_batch"})),
    "tensorrt": FormatSpec(("fp32", "fp16", "int8"), frozenset({"opset", "max_batch", "tensorrt_opt_batch", "tensorrt_workspace_mib"})),
}


def parse_format_entry(entry: str) -> tuple[str, tuple[str, ...]]:
    """'onnx' -> ("onnx", every precision it has); 'ncnn:fp32,fp16' -> those precisions; else a one-line ValueError."""
    name, _, precisions = entry.partition(":")
    if name not in FORMAT_SPECS:
        raise ValueError(f"unknown export format {name!r}; known: {', '.join(FORMAT_SPECS)}")
    spec = FORMAT_SPECS[name]
    chosen = tuple(p for p in precisions.split(",") if p) or spec.precisions
    unknown = [p for p in chosen if p not in spec.precisions]
    if unknown:
        raise ValueError(f"format {name!r} has no precision {', '.join(unknown)}; it has {', '.join(spec.precisions)}")
    return name, chosen


def options_taken(entries: Iterable[str]) -> frozenset[str]:
    """Every `export` option that at least one of these format entries reads."""
    taken = set(GENERAL_OPTIONS)
    for entry in entries:
        name, precisions = parse_format_entry(entry)
        taken |= FORMAT_SPECS[name].options_for(precisions)
    return frozenset(taken)


def readers_of(option: str) -> list[str]:
    """Format entries that would read `option` ('ncnn:fp16', 'onnx', ...), for an error that says what to list."""
    readers = []
    for name, spec in FORMAT_SPECS.items():
        if option in spec.options:
            readers.append(name)
            continue
        readers += [f"{name}:{precision}" for precision in spec.precisions if option in spec.options_for([precision])]
    return readers
