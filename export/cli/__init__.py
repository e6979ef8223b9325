"""`qwen-mobile`: the command line. A thin argparse layer over the typed functions of every package.

It lives in the export package because that is the layer allowed to import the other two (export -> runtime,
models); the commands themselves live with what they run:
    model_commands.py      presets, check, generate (our eager model on SOURCE)
    export_command.py      export (any recipe of export/recipes/), demo
    runtime/commands.py    run, chat, bench, inspect (a bundle), with their flags
"""

from __future__ import annotations

import argparse
import sys

from qwen_mobile.runtime.commands import add_bundle_commands, positive_int
from qwen_mobile.runtime.errors import UsageError

from ..verify import VerificationError
from . import export_command, model_commands
from .common import parse_ids

DESCRIPTION = """\
qwen-mobile: Qwen3.5 small models from a local Hugging Face checkpoint to a phone.

SOURCE is a local HF folder (config.json + *.safetensors), the name of the model shipped in models/
('nano'), or a preset name (random weights in a real shape: 0_8b, 2b, 4b, 9b, tiny).
"""


def add_source(p, required=True):
    """SOURCE: what every model and export command takes."""
    p.add_argument("source", metavar="SOURCE", nargs=None if required else "?",
                   help="HF folder, shipped model name ('nano') or preset name")


def add_prompt(p):
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompt", default="def fibonacci(n):\n", help="prompt text (needs tokenizer.json in SOURCE)")
    g.add_argument("--prompt-ids", type=parse_ids, default=None, metavar="1,2,3",
                   help="prompt as token ids, for checkpoints without a tokenizer")


def add_impl(p):
    p.add_argument("--gdn-impl", default="op", choices=["op", "reference", "chunked", "recurrent"],
                   help="gated delta rule implementation: 'op' = our native kernel (default), "
                        "'reference' = the pure-PyTorch references (no compiled code)")


def add_model_commands(sub) -> None:
    """presets, check, generate: our eager model on SOURCE (model_commands.py)."""
    p = sub.add_parser("presets", help="list the size presets and shipped models")
    p.set_defaults(func=model_commands.cmd_presets)

    p = sub.add_parser("check", help="compare our model with transformers on a checkpoint (logits, greedy tokens)")
    add_source(p)
    add_prompt(p)
    add_impl(p)
    p.add_argument("--new-tokens", type=positive_int, default=16, help="greedy tokens to compare (default 16)")
    p.add_argument("--atol", type=float, default=1e-4, help="bound on the max |logit| difference (default 1e-4)")
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    p.set_defaults(func=model_commands.cmd_check)

    p = sub.add_parser("generate", help="greedy eager generation with our model, streamed")
    add_source(p)
    add_prompt(p)
    add_impl(p)
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.set_defaults(func=model_commands.cmd_generate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwen-mobile", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_model_commands(sub)
    export_command.add_export_command(sub, add_source)
    add_bundle_commands(sub, add_prompt)  # run, chat, bench, inspect: runtime/commands.py
    export_command.add_demo_command(sub, add_source)
    return parser


# Errors a user can act on: one line naming the flag, file or field, exit code 1 (argparse's usage errors exit 2).
# Anything else is a bug and keeps its traceback.
USER_ERRORS = (OSError, ValueError, VerificationError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as err:
        print(f"qwen-mobile {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        what = "; nothing written" if args.command in ("export", "demo") else ""
        print(f"\nqwen-mobile {args.command}: interrupted{what}", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
