"""The training settings, ``TrainConfig``, and the command line generated from its fields.

Each field's metadata carries its help text and, where it differs from the field
name, its flag, so a setting and its option cannot drift apart: a new field is a
new option. ``option(...)`` builds such a field; see ``build_parser`` for how types
become arguments (bools become on/off switches, lists repeatable options).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Callable

from model.fusion.base import DEFAULT_ARCHITECTURE


def option(default: Any = MISSING, *, help: str, flag: str | None = None, metavar: str | None = None,
           append: bool = False, parse: Callable[[Any], Any] | None = None, off_flag: str | None = None,
           off_help: str | None = None, cli: bool = True, default_factory: Any = MISSING):
    """A TrainConfig field and its command-line option.

    ``flag``: the option name (default ``--field-name``); for a bool it is the switch
    that flips the default. ``append``: repeatable, values collected in a list.
    ``parse``: turns the option's value (a string, or a list with ``append``) into
    the field's. ``off_flag``: an extra switch that sets the field to None.
    ``cli=False``: a setting for callers only (the option is left out).
    """
    metadata = dict(help=help, flag=flag, metavar=metavar, append=append, parse=parse, off_flag=off_flag,
                    off_help=off_help, cli=cli)
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _comma_list(value: str) -> list[str] | None:
    return [part.strip() for part in value.split(",") if part.strip()] or None


def _parse_eval(values: list[str]) -> dict[str, str]:
    extra = {}
    for value in values:
        name, sep, spec = value.partition("=")
        if not sep or not name or not spec:
            raise argparse.ArgumentTypeError(f"--eval expects NAME=MANIFEST[:SPLIT], got {value!r}")
        extra[name] = spec
    return extra


@dataclass
class TrainConfig:
    manifest: Path = option(help="JSONL or CSV manifest")
    out: Path = option(help="bundle folder to write")
    base_bundle: Path | None = option(None, flag="--bundle", help="base bundle naming the encoders")
    text_encoder: str | None = option(None, help="BERT-family hub id or folder (overrides --bundle)")
    audio_encoder: str | None = option(None, help="Wav2Vec2-family hub id or folder (overrides --bundle)")
    labels: list[str] | None = option(None, parse=_comma_list,
                                      help="comma-separated label order (default: the train split's labels)")
    extra_eval: dict[str, str] = option(default_factory=dict, flag="--eval", append=True, parse=_parse_eval,
                                        metavar="NAME=MANIFEST[:SPLIT]",
                                        help="also evaluate on this manifest's split (default test); repeatable")
    cache_dir: Path | None = option(Path("artifacts/feature-cache"), help="feature cache folder",
                                    off_flag="--no-cache", off_help="do not read or write the feature cache")
    features: Path | None = option(None, help="feature table written by `python -m jobs features` with the same "
                                              "encoders: items found there are not encoded again (and fill the cache)")
    drop_invalid: bool = option(False, help="leave out (and count) items that fail validation")
    check_audio: bool = option(True, flag="--skip-audio-check", help="do not decode every audio file during validation")
    seed: int = option(0, help="seed of every random choice (initialisation, shuffling, crops)")
    # Fusion head
    epochs: int = option(30, help="fusion-head epochs at most (early stopping applies)")
    batch_size: int = option(32, help="fusion-head batch size")
    lr: float = option(3e-4, help="fusion-head learning rate (AdamW)")
    weight_decay: float = option(0.01, help="AdamW weight decay (fusion head and fine-tuning)")
    patience: int = option(5, help="early-stopping patience in epochs")
    aux_weight: float = option(0.5, help="weight of the unimodal auxiliary losses (MMML); 0 disables them")
    regression_weight: float | None = option(
        None, help="weight of the L1 loss on score (default: 1 when the train split has scores, else 0)")
    d_model: int = option(128, help="fusion-head width")
    n_heads: int = option(4, help="attention heads in the fusion head")
    n_layers: int = option(1, help="cross-modal layers in the fusion head")
    dropout: float = option(0.1, help="fusion-head dropout")
    fusion_architecture: str = option(DEFAULT_ARCHITECTURE, cli=False,
                                      help="the fusion head's architecture (a name in model.fusion's registry)")
    # Encoders and features
    text_max_length: int | None = option(None, help="tokens per text at most (default: the base bundle's, else 128)")
    max_audio_seconds: float | None = option(20.0, help="audio is cut to this many seconds, to bound the cost")
    text_batch_size: int = option(64, help="texts per encoder batch when extracting features")
    audio_batch_size: int = option(16, help="clips per encoder batch when extracting features")
    # Optional encoder fine-tuning (stage 2)
    finetune_text_layers: int = option(0, help="fine-tune the last N text layers (-1: all)")
    finetune_audio_layers: int = option(
        0, help="fine-tune the last N audio layers (-1: all, the convolutional front end included)")
    finetune_epochs: int = option(3, help="fine-tuning epochs at most")
    finetune_lr: float = option(5e-5, help="fine-tuning learning rate")
    finetune_batch_size: int = option(16, help="fine-tuning batch size")
    finetune_patience: int = option(2, cli=False, help="fine-tuning early-stopping patience in epochs")
    finetune_crop_seconds: float | None = option(
        None, help="random audio crops of this length while fine-tuning, for speed (default: whole clips)")
    # Bundle metadata
    name: str = option("trained", help="bundle name")
    version: str = option("0.1.0", help="bundle version")
    notes: list[str] = option(default_factory=list, flag="--note", append=True, metavar="NOTE",
                              help="a note stored in the bundle; repeatable")
    device: str | None = option(None, help="torch device (default: cuda if visible, else cpu)")
    progress: bool = option(True, flag="--no-progress", help="no progress bars (logs only)")


# --------------------------------------------------------------------------- the generated CLI


class _HelpFormatter(argparse.HelpFormatter):
    """Shows a default only where one is set and the option takes a value."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.nargs != 0 and action.default not in (None, [], argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _value_type(hint) -> type:
    """``X | None`` -> X; ``list[X]`` -> X."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    if typing.get_origin(hint) is list:
        hint = typing.get_args(hint)[0]
    return hint


def _cli_fields() -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(TrainConfig)
    return [(f, hints[f.name]) for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli", True)]


def _off_dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def build_parser(prog: str = "python -m model.training",
                 description: str = "Train a bundle (fusion head, optionally fine-tuned encoders) from a manifest."
                 ) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=_HelpFormatter)
    for f, hint in _cli_fields():
        meta = f.metadata
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": f.name, "help": meta["help"]}
        value_type = _value_type(hint)
        if value_type is bool:
            # The flag flips the default: --drop-invalid sets True, --no-progress sets False.
            kwargs["action"] = "store_false" if f.default else "store_true"
        else:
            if meta["append"]:
                kwargs["action"] = "append"
            elif f.default is MISSING and f.default_factory is MISSING:
                kwargs["required"] = True
            if meta["parse"] is None:
                kwargs["type"] = value_type
            if meta["metavar"]:
                kwargs["metavar"] = meta["metavar"]
            # Appended values start from None (not the field's list): argparse appends to its default.
            kwargs["default"] = None if meta["append"] or f.default is MISSING else f.default
        p.add_argument(flag, **kwargs)
        if meta["off_flag"]:
            p.add_argument(meta["off_flag"], dest=_off_dest(meta["off_flag"]), action="store_true",
                           help=meta["off_help"])
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {}
    for f, _ in _cli_fields():
        meta = f.metadata
        value = getattr(args, f.name)
        if value is not None and meta["parse"] is not None:
            value = meta["parse"](value)
        if value is None and f.default_factory is not MISSING:
            value = f.default_factory()
        if meta["off_flag"] and getattr(args, _off_dest(meta["off_flag"])):
            value = None
        values[f.name] = value
    return TrainConfig(**values)
