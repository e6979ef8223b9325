"""The bundle-side subcommands of `qwen-mobile`: run, chat, bench, inspect (argparse wiring lives in export/cli.py)."""

from __future__ import annotations

import argparse

import contextlib
import json
import signal
import sys
import threading
from pathlib import Path

from .chat import IM_END, ChatTemplate, thinking_default
from .errors import UsageError
from .sampling import Sampler, SamplingConfig
from .bundle import Bundle
from .session import ContextOverflowError, TextStream


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
    images = "".join(f"image {im['original_hw'][0]}x{im['original_hw'][1]} -> {im['encoded_hw'][0]}x"
                     f"{im['encoded_hw'][1]} (HxW, {im['tokens']} tokens), " for im in result.images)
    if images:
        images += f"encoded in {result.image_encode_s * 1e3:.0f} ms; "
    return (f"[{what}: {images}{len(result.prompt_ids)} prompt tokens in {result.prefill_s * 1e3:.0f} ms "
            f"({result.prefill_tok_s:.0f} tok/s), TTFT {result.ttft_s * 1e3:.0f} ms; {len(result.ids)} generated, "
            f"decode {decode}; stop: {result.stop_reason}; on this host]")


def _load_images(bundle: Bundle, paths: list[str], size_text: str | None) -> list:
    """--image PATH ... (and --image-size) -> the bundle's image inputs; a text-only bundle is a clear error."""
    from .images import load_image, parse_size

    if not paths:
        if size_text:
            raise UsageError("--image-size needs --image")
        return []
    if bundle.vision is None:
        raise UsageError(f"--image: BUNDLE {bundle.folder} has no image methods (its checkpoint has no vision tower, "
                         "or it was exported with --no-vision); export a vision checkpoint to ask about images")
    try:
        size = parse_size(size_text) if size_text else None
        return [load_image(path, bundle.vision, size) for path in paths]
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(f"--image: {err}") from None


def _image_span_text(bundle: Bundle, count: int) -> str:
    """The text of `count` image places, Qwen's chat template's form (the session expands each image token)."""
    tok, vision = bundle.tokenizer, bundle.vision
    start, pad, end = (tok.id_to_token(vision[k]) for k in ("vision_start_token_id", "image_token_id",
                                                             "vision_end_token_id"))
    if None in (start, pad, end):
        raise UsageError(f"BUNDLE {bundle.folder}'s tokenizer lacks the vision tokens {vision['vision_start_token_id']}, "
                         f"{vision['image_token_id']}, {vision['vision_end_token_id']}; pass --prompt-ids")
    return (start + pad + end) * count


def _with_image_places(bundle: Bundle, ids: list[int], count: int) -> list[int]:
    """Token ids that hold no image token get the images' spans in front; ids that hold them are left as given."""
    if not count or bundle.vision["image_token_id"] in ids:
        return ids
    from .images import image_span

    return image_span(bundle.vision) * count + ids


def cmd_run(args) -> int:
    """One prompt through a bundle: stream the text, optionally write JSON and every step's logits."""
    bundle = Bundle(args.bundle, verify=not args.no_verify)
    images = _load_images(bundle, args.image or [], args.image_size)
    if args.prompt_ids is not None:
        ids = _with_image_places(bundle, list(args.prompt_ids), len(images))
    else:
        text = args.prompt
        if args.chat:
            template = ChatTemplate(thinking=_thinking(args, bundle))
            places = _image_span_text(bundle, len(images)) if images else ""
            text = (template.system(args.system) if args.system else "") + template.user(places + text)
            ids = bundle.encode(text)
        else:
            ids = _with_image_places(bundle, bundle.encode(text), len(images))
    if not ids:
        raise UsageError("the prompt is empty: give --prompt text or --prompt-ids")
    limit = bundle.max_seq_len
    if len(ids) > limit:
        if args.truncate != "left":
            raise ContextOverflowError(
                f"prompt of {len(ids)} tokens exceeds the bundle's context of {limit} tokens; shorten it, re-export "
                f"with a larger --max-seq-len, or pass --truncate left")
    if images and args.truncate == "left":
        raise UsageError("--truncate left cannot cut a prompt that holds an image; shorten the text instead")
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
        if bundle.tokenizer is not None and args.prompt_ids is None and not args.chat and not images:
            print(bundle.decode(ids), end="", flush=True)
        stream = TextStream(bundle, lambda s: print(s, end="", flush=True))
    result = session.generate(ids, args.max_new_tokens, sampler, on_token=stream,
                              keep_logits=args.dump_logits is not None, images=images)
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


CHAT_HELP = """commands: /image PATH attach an image to your next message (bundles with image methods)
          /save NAME  save the conversation state (NAME.safetensors in --snapshot-dir)
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
    attached: list = []  # images for the next message (/image)
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
        if line.startswith("/image"):
            _attach_image(line, bundle, attached)
            continue
        if line.startswith("/"):
            if _chat_command(line, session, base, snapshot_dir) == "quit":
                break
            continue
        # The previous reply ended on <|im_end|> (pending, fed with this prompt) or was cut at --max-new-tokens.
        close = ChatTemplate.close_assistant(session.pending == [im_end]) if session.pending else ""
        images, attached[:] = list(attached), []
        try:
            places = _image_span_text(bundle, len(images)) if images else ""
            ids = bundle.encode(close + template.user(places + line))
            stream = TextStream(bundle, lambda s: print(s, end="", flush=True))

            def show(token: int, stream=stream):  # the reply's text, without the stop token
                if token not in bundle.stop_ids:
                    stream(token)

            with _interruptible() as interrupted:
                result = session.generate(ids, args.max_new_tokens, sampler, on_token=show, cancelled=interrupted,
                                          images=images)
        except ContextOverflowError as err:
            print(f"\nerror: {err}", file=sys.stderr)
            continue
        print()
        stopped = " (stopped by Ctrl-C)" if result.stop_reason == "cancelled" else ""
        print(_timings_line(result, f"position {session.position}/{bundle.max_seq_len}") + stopped, file=sys.stderr)
    return 0


def _attach_image(line: str, bundle: Bundle, attached: list) -> None:
    """/image PATH: decode and resize now (a bad file is reported at once), send with the next message."""
    path = line.partition(" ")[2].strip()
    try:
        if not path:
            raise UsageError("/image needs a PATH")
        image = _load_images(bundle, [path], None)[0]
    except UsageError as err:
        print(f"error: {str(err).replace('--image: ', '/image: ', 1)}", file=sys.stderr)
        return
    attached.append(image)
    (h, w), (eh, ew) = image.original_size, image.size
    print(f"[image {path}: {h}x{w} -> {eh}x{ew} (HxW), {image.tokens} tokens; sent with your next message]",
          file=sys.stderr)


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


# --------------------------------------------------------------------------------------------- the flags --

def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def token_counts(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token counts such as 128,512, got {text!r}") \
            from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive token counts, got {text!r}")
    return values


def add_bundle_commands(sub, add_prompt) -> None:
    """The flags of run, chat, bench and inspect: every command that takes an exported bundle (add_prompt: the CLI's
    --prompt/--prompt-ids pair, shared with the eager commands)."""
    def add_bundle(p):
        p.add_argument("bundle", metavar="BUNDLE", help="bundle folder written by `qwen-mobile export`")
        p.add_argument("--no-verify", action="store_true",
                       help="skip the sha256 check of every file against the manifest (faster load of big bundles)")

    def add_sampling(p):
        g = p.add_argument_group("sampling (transformers semantics, applied in this order)")
        g.add_argument("--repetition-penalty", type=float, default=1.0,
                       help="> 1 discourages tokens already in the context (default 1 = off)")
        g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); e.g. 0.7")
        g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
        g.add_argument("--top-p", type=float, default=1.0, help="keep the smallest set with this much mass (1 = off)")
        g.add_argument("--seed", type=int, default=None,
                       help="seed of the sampler; the same seed reproduces the same tokens (default: random, printed)")

    def add_chat_flags(p):
        p.add_argument("--system", default=None, help="system prompt")
        g = p.add_mutually_exclusive_group()
        g.add_argument("--thinking", dest="thinking", action="store_true", default=None,
                       help="open a <think> block for the reply")
        g.add_argument("--no-thinking", dest="thinking", action="store_false",
                       help="pre-fill an empty <think></think> block (default for 0.8B/2B and the shipped model)")

    p = sub.add_parser("run", formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="generate from one prompt through a bundle on this host",
                       description="Generate from one prompt through a bundle's .pte on this host (ExecuTorch "
                                   "pybindings + our kernels), streaming text; timings go to stderr.",
                       epilog="examples:\n  qwen-mobile run out/nano-8da4w --prompt 'def add(a, b):'\n"
                              "  qwen-mobile run B --prompt-ids 1,2,3 --json - --dump-logits steps.npy\n"
                              "  qwen-mobile run B --chat --prompt 'Write a haiku' --temperature 0.7 --seed 1\n"
                              "  qwen-mobile run VLM_BUNDLE --chat --image photo.jpg --prompt 'What is in this picture?'")
    add_bundle(p)
    add_prompt(p)
    p.add_argument("--chat", action="store_true", help="wrap --prompt in the ChatML template as a user turn")
    p.add_argument("--image", action="append", metavar="PATH",
                   help="an image (PNG, JPEG, ...) to ask about; repeat for several. Bundles with image methods only. "
                        "It goes before the text, or where --prompt-ids holds an image token")
    p.add_argument("--image-size", metavar="S|HxW",
                   help="encode at this one of the bundle's image sizes (default: the size rule of "
                        "runtime/CONTRACT.md: closest shape, largest that does not upscale)")
    add_chat_flags(p)
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="default %(default)s")
    add_sampling(p)
    p.add_argument("--truncate", choices=["error", "left"], default="error",
                   help="a prompt longer than the context: 'error' (default) refuses; 'left' drops the oldest "
                        "prompt tokens so the prompt plus --max-new-tokens fit")
    p.add_argument("--json", metavar="OUT", help="write ids, text, stop reason, timings and sampling as JSON "
                                                  "('-' = stdout only, no streamed text)")
    p.add_argument("--dump-logits", metavar="PATH.npy",
                   help="save the logits every generated token was sampled from, float32 [steps, vocab]")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("chat", formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="interactive chat that keeps the model state between turns (/save, /load, /reset)",
                       description="Chat with a bundle. Each turn prefills only the new message: the KV caches, conv "
                                   "and recurrent states carry the history. Snapshots save that state to a file "
                                   "tied to this bundle's hash.",
                       epilog="inside the chat, " + CHAT_HELP)
    add_bundle(p)
    add_chat_flags(p)
    p.add_argument("--max-new-tokens", type=positive_int, default=256, help="per reply (default %(default)s)")
    p.add_argument("--snapshot-dir", default=".", help="where /save and /load keep NAME.safetensors (default: .)")
    add_sampling(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("bench", formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="time bundles on this host: TTFT, prefill and decode tok/s, peak RSS; JSON and plot",
                       description="Benchmark bundles side by side in this process, or compare saved results. Each "
                                   "TARGET is a bundle folder (measured now), a JSON file in the bench schema "
                                   "(runtime/schemas/bench.schema.json: from this command, the native runner or the "
                                   "apps), or a folder of such files (e.g. a device farm's artifacts, searched "
                                   "recursively). Ratios in the table are against the first target; results from "
                                   "several devices are shown one row per device and bundle.",
                       epilog="examples:\n  qwen-mobile bench out/nano-8da4w out/nano-fp32 --plot nano.png\n"
                              "  qwen-mobile bench out/nano-8da4w --json host.json\n"
                              "  qwen-mobile bench host.json pixel8.json --plot compare.png\n"
                              "  qwen-mobile bench farm-results/ --plot devices.png     # one row per device")
    p.add_argument("targets", metavar="TARGET", nargs="+", help="bundle folder, bench JSON file, or folder of them")
    p.add_argument("--prompt-lengths", type=token_counts, default=[128, 512], metavar="N,N",
                   help="prompt lengths to time prefill at (default 128,512)")
    p.add_argument("--gen", type=positive_int, default=64, help="tokens to decode per run (default %(default)s)")
    p.add_argument("--runs", type=positive_int, default=5, help="timed runs per prompt length (default %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompt ids (default %(default)s)")
    p.add_argument("--json", metavar="OUT", help="write the results (one object, or a list for several targets)")
    p.add_argument("--plot", metavar="OUT.png", help="bar chart of prefill and decode tok/s, p10-p90 whiskers")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("inspect", help="what is inside a bundle: manifest, methods, ops, delegation, sizes")
    add_bundle(p)
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.set_defaults(func=cmd_inspect)
