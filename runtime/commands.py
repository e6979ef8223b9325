"""The bundle-side subcommands of `qwen-mobile`: run, chat, bench, inspect (argparse wiring lives in export/cli.py)."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from pathlib import Path

from .chat import IM_END, ChatTemplate, thinking_default
from .errors import UsageError
from .sampling import Sampler, SamplingConfig
from .session import Bundle, ContextOverflowError, TextStream


def sampling_from_args(args) -> SamplingConfig:
    return SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          repetition_penalty=args.repetition_penalty, seed=args.seed)


def _thinking(args, bundle: Bundle) -> bool:
    if args.thinking is not None:
        return args.thinking
    recorded = bundle.manifest["tokenizer"].get("thinking_default")
    if recorded is not None:
        return recorded
    return thinking_default(bundle.manifest["model"].get("size"), bundle.chat_template_source())


def _timings_line(result, what: str) -> str:
    decode = f"{result.decode_tok_s:.1f} tok/s" if result.decode_tok_s else "-"
    return (f"[{what}: {len(result.prompt_ids)} prompt tokens in {result.prefill_s * 1e3:.0f} ms "
            f"({result.prefill_tok_s:.0f} tok/s), TTFT {result.ttft_s * 1e3:.0f} ms; {len(result.ids)} generated, "
            f"decode {decode}; stop: {result.stop_reason}; on this host]")


def cmd_run(args) -> int:
    """One prompt through a bundle: stream the text, optionally write JSON and every step's logits."""
    bundle = Bundle(args.bundle, verify=not args.no_verify)
    if args.prompt_ids is not None:
        ids = list(args.prompt_ids)
    else:
        text = args.prompt
        if args.chat:
            template = ChatTemplate(thinking=_thinking(args, bundle))
            text = (template.system(args.system) if args.system else "") + template.user(text)
        ids = bundle.encode(text)
    if not ids:
        raise UsageError("the prompt is empty: give --prompt text or --prompt-ids")
    limit = bundle.max_seq_len
    if len(ids) > limit:
        if args.truncate != "left":
            raise ContextOverflowError(
                f"prompt of {len(ids)} tokens exceeds the bundle's context of {limit} tokens; shorten it, re-export "
                f"with a larger --max-seq-len, or pass --truncate left")
    if args.truncate == "left" and len(ids) + args.max_new_tokens > limit:
        keep = max(1, limit - args.max_new_tokens)
        print(f"[--truncate left: dropped the first {len(ids) - keep} of {len(ids)} prompt tokens so the prompt and "
              f"{args.max_new_tokens} new tokens fit the context of {limit}]", file=sys.stderr)
        ids = ids[-keep:]
    sampler = Sampler(sampling_from_args(args))
    session = bundle.session()
    quiet = args.json == "-"
    if not bundle.stop_ids:
        print(f"[{bundle.label} has no stop ids (its model names no end-of-sequence token): generation stops only at "
              f"--max-new-tokens {args.max_new_tokens}]", file=sys.stderr)
    stream = None
    if not quiet:
        if bundle.tokenizer is not None and args.prompt_ids is None and not args.chat:
            print(bundle.decode(ids), end="", flush=True)
        stream = TextStream(bundle, lambda s: print(s, end="", flush=True))
    result = session.generate(ids, args.max_new_tokens, sampler, on_token=stream,
                              keep_logits=args.dump_logits is not None)
    if not quiet:
        print()
        print(_timings_line(result, f"{bundle.label}, seed {sampler.seed}" if not sampler.config.greedy
                            else bundle.label), file=sys.stderr)
    if args.dump_logits:
        import numpy as np

        np.save(args.dump_logits, np.stack([t.numpy() for t in result.logits]) if result.logits
                else np.zeros((0, bundle.vocab_size), dtype=np.float32))
    if args.json:
        text = bundle.decode(result.ids) if bundle.tokenizer is not None else None
        doc = result.as_dict(text) | {"bundle": str(bundle.folder), "bundle_hash": bundle.hash,
                                      "sampling": sampler.config.as_dict() | {"seed": sampler.seed}}
        payload = json.dumps(doc, indent=2)
        if args.json == "-":
            print(payload)
        else:
            Path(args.json).write_text(payload + "\n")
    return 0


CHAT_HELP = """commands: /save NAME  save the conversation state (NAME.safetensors in --snapshot-dir)
          /load NAME  restore it (instantly; nothing is re-prefilled)
          /reset      back to just after the system prompt
          /quit       leave"""


def cmd_chat(args) -> int:
    """Interactive chat that keeps the model state between turns; /save, /load, /reset.

    Nothing but /quit or the end of input ends it: a failing command prints one line and the conversation goes on with
    its state intact, and Ctrl-C during a reply stops that reply (at the prompt it clears the line).
    """
    if sys.stdin is None or sys.stdin.closed:
        raise OSError("chat: standard input is closed; run it in a terminal, or pipe the messages in")
    bundle = Bundle(args.bundle, verify=not args.no_verify)
    if bundle.tokenizer is None:
        raise ValueError(f"BUNDLE {bundle.folder} has no tokenizer; chat needs one (use `run --prompt-ids`)")
    template = ChatTemplate(thinking=_thinking(args, bundle))
    im_end = bundle.tokenizer.token_to_id(IM_END)
    sampler = Sampler(sampling_from_args(args))
    session = bundle.session()
    snapshot_dir = Path(args.snapshot_dir)
    interactive = sys.stdin.isatty()
    if args.system:
        session.prefill(bundle.encode(template.system(args.system)))
    base = session.snapshot() if session.position else None
    print(f"[{bundle.label}: context {bundle.max_seq_len} tokens, thinking {'on' if template.thinking else 'off'}, "
          f"seed {sampler.seed}; /help for commands]", file=sys.stderr)

    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            print("\n[Ctrl-C clears the line; /quit or Ctrl-D leaves]", file=sys.stderr)
            continue
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if not interactive:  # a piped script: echo it so the transcript reads like a session
            print(f"> {line}")
        if line.startswith("/"):
            if _chat_command(line, session, base, snapshot_dir) == "quit":
                break
            continue
        # The previous reply ended on <|im_end|> (pending, fed with this prompt) or was cut at --max-new-tokens.
        close = ChatTemplate.close_assistant(session.pending == [im_end]) if session.pending else ""
        try:
            ids = bundle.encode(close + template.user(line))
            stream = TextStream(bundle, lambda s: print(s, end="", flush=True))

            def show(token: int, stream=stream):  # the reply's text, without the stop token
                if token not in bundle.stop_ids:
                    stream(token)

            with _interruptible() as interrupted:
                result = session.generate(ids, args.max_new_tokens, sampler, on_token=show, cancelled=interrupted)
        except ContextOverflowError as err:
            print(f"\nerror: {err}", file=sys.stderr)
            continue
        print()
        stopped = " (stopped by Ctrl-C)" if result.stop_reason == "cancelled" else ""
        print(_timings_line(result, f"position {session.position}/{bundle.max_seq_len}") + stopped, file=sys.stderr)
    return 0


def _chat_command(line: str, session, base, snapshot_dir: Path) -> str | None:
    """One /command of the chat; its failure is reported in one line and never ends the chat."""
    cmd, _, arg = line.partition(" ")
    arg = arg.strip()
    try:
        if cmd in ("/quit", "/exit"):
            return "quit"
        elif cmd == "/help":
            print(CHAT_HELP)
        elif cmd == "/reset":
            session.restore(base) if base is not None else session.reset()
            print(f"[reset to position {session.position}]", file=sys.stderr)
        elif cmd in ("/save", "/load"):
            if not arg:
                raise ValueError(f"{cmd} needs a NAME")
            path = snapshot_dir / (arg if arg.endswith(".safetensors") else f"{arg}.safetensors")
            if cmd == "/save":
                snapshot_dir.mkdir(parents=True, exist_ok=True)
                session.save(path)
                print(f"[saved position {session.position} to {path}]", file=sys.stderr)
            else:
                session.load(path)
                print(f"[loaded {path}: position {session.position}]", file=sys.stderr)
        else:
            print(f"[unknown command {cmd}]\n{CHAT_HELP}", file=sys.stderr)
    except (OSError, ValueError, RuntimeError) as err:  # disk full, no permission, a bad snapshot: say it, go on
        print(f"error: {cmd}: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"\n[{cmd} interrupted]", file=sys.stderr)
    return None


@contextlib.contextmanager
def _interruptible():
    """While a reply streams, Ctrl-C asks it to stop after the current token instead of raising in the middle of a
    program call (which would leave the session's position and the model state out of step)."""
    hit = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield hit.is_set
        return
    previous = signal.signal(signal.SIGINT, lambda *_: hit.set())
    try:
        yield hit.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def cmd_bench(args) -> int:
    from . import bench

    results, from_folders = [], False
    for item in args.targets:
        path = Path(item)
        if path.is_file() and path.suffix == ".json":
            results += bench.load_results(path)
            continue
        if path.is_dir() and not (path / "manifest.json").is_file():  # a folder of results, e.g. from a device farm
            found, skipped = bench.load_result_folder(path)
            print(f"[{path}: {len(found)} bench results"
                  + (f", {len(skipped)} other JSON files skipped" if skipped else "") + "]", file=sys.stderr)
            results += found
            from_folders = True
            continue
        print(f"[bench {path}: prompts {args.prompt_lengths}, {args.gen} new tokens, {args.warmup} warm-up + "
              f"{args.runs} runs, in its own process]", file=sys.stderr)
        result = bench.bench_bundle_in_subprocess(path, args.prompt_lengths, args.gen, args.runs, args.warmup,
                                                  args.seed)
        bench.validate_bench(result)
        results.append(result)
    many_devices = len({r["device"]["model"] for r in results}) > 1
    by_device = from_folders or many_devices
    print(bench.device_table(results) if by_device else bench.table(results))
    if args.json:
        doc = results[0] if len(results) == 1 else results
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        drawn = bench.device_plot(results, args.plot) if by_device else bench.plot(results, args.plot)
        print(f"wrote {drawn}", file=sys.stderr)
    return 0


def cmd_inspect(args) -> int:
    from .bundle import bundle_hash, load_manifest
    from .inspection import format_report, inspect_program

    folder = Path(args.bundle)
    manifest = load_manifest(folder, check_hashes=not args.no_verify)
    report = inspect_program(folder / manifest["program"]["file"])
    if args.json:
        print(json.dumps({"bundle_hash": bundle_hash(manifest), "manifest": manifest, "program": report}, indent=2))
    else:
        print(format_report(folder, manifest, report, bundle_hash(manifest)))
    return 0
