"""What every command module of the CLI shares: the table printer, prompt flags and their parsing."""

from __future__ import annotations

import argparse
from pathlib import Path

from qwen_mobile.runtime.errors import UsageError


def table(rows: list[tuple[str, object]], title: str | None = None) -> str:
    width = max(len(k) for k, _ in rows)
    lines = [title, "-" * len(title)] if title else []
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines)


def parse_ids(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--prompt-ids expects comma-separated integers, got {text!r}") from None


def tokenizer_for(source):
    from qwen_mobile.export.source import resolve_source

    resolved = resolve_source(source)
    path = Path(resolved) / "tokenizer.json" if isinstance(resolved, Path) else None
    if path is None or not path.is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def prompt_ids(args, tokenizer) -> list[int]:
    if args.prompt_ids is not None:
        if not args.prompt_ids:
            raise UsageError("the prompt is empty: give --prompt text or --prompt-ids")
        return args.prompt_ids
    if tokenizer is None:
        raise FileNotFoundError(f"SOURCE '{args.source}' has no tokenizer.json; pass --prompt-ids instead of --prompt")
    ids = tokenizer.encode(args.prompt, add_special_tokens=False).ids
    if not ids:
        raise UsageError("the prompt is empty: give --prompt text or --prompt-ids")
    return ids
