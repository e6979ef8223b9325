"""Bundle folders: the manifest contract, hashes, atomic writes, validation.

A bundle is a folder holding `model.pte`, `tokenizer.json` and `tokenizer_config.json` when the source had them, and
`manifest.json` (the contract: contract.py and CONTRACT.md; schema: schemas/manifest.schema.json). It is written
under a temporary name beside its destination and renamed only once complete and verified, so a failed or interrupted
export never leaves a bundle that looks whole. `Bundle` opens one for running: manifest, tokenizer and program.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from .contract import BUNDLE_FORMAT, MANIFEST, MANIFEST_SCHEMA_VERSION, PREFILL_METHOD, SCHEMA_PATH

if TYPE_CHECKING:
    from .session import Session


class BundleError(ValueError):
    """A bundle folder that is incomplete, tampered with, or does not match the manifest schema."""


def package_version(package: str = "qwen-mobile", default: str = "0.0.0+unknown") -> str:
    """An installed distribution's version (the toolkit's by default), as manifests and bench results record it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return default


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entries(folder: Path) -> dict[str, dict]:
    """Every file of the bundle but the manifest, keyed by its path relative to the bundle ("/"-separated).

    Files inside a directory (a Core ML `.mlpackage` is one) are listed one by one, e.g.
    "model.mlpackage/Data/com.apple.CoreML/weights/weight.bin"; a flat bundle's keys are plain file names.
    """
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST}


def bundle_hash(manifest: dict) -> str:
    """One identity for a bundle: the hash of its files' hashes (what snapshots and bench results refer to)."""
    joined = "".join(f"{name}:{entry['sha256']};" for name, entry in sorted(manifest["files"].items()))
    return hashlib.sha256(joined.encode()).hexdigest()


def validate_against(schema_path: Path, doc: dict, source: str) -> None:
    """jsonschema validation whose error names the source and the field, e.g. `x.json: field 'results/0': ...`."""
    import jsonschema

    schema = json.loads(schema_path.read_text())
    try:
        jsonschema.validate(doc, schema)
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise BundleError(f"{source}: field '{where}': {err.message}") from None


def validate_manifest(manifest: dict, source: str = MANIFEST) -> None:
    validate_against(SCHEMA_PATH, manifest, source)


def load_manifest(folder: str | Path, check_hashes: bool = True) -> dict:
    """Read and validate a bundle's manifest; with check_hashes, every listed file must exist with its sha256."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise BundleError(f"{folder}: no {MANIFEST}; not a qwen-mobile bundle")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{path}: not valid JSON ({err})") from None
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if isinstance(version, int) and version != MANIFEST_SCHEMA_VERSION:
        # A version-1 program has no `decode_token` method, so it could not run here: say so before the schema's
        # field-by-field complaints.
        raise BundleError(f"{path}: manifest schema_version {version!r}, this qwen-mobile reads version "
                          f"{MANIFEST_SCHEMA_VERSION}; re-export the bundle with this version")
    validate_manifest(manifest, str(path))
    if check_hashes:
        for name, entry in manifest["files"].items():
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise BundleError(f"{folder}: file '{name}' in the manifest points outside the bundle")
            f = folder / name
            if not f.is_file():
                raise BundleError(f"{folder}: file '{name}' listed in the manifest is missing")
            if f.stat().st_size != entry["bytes"] or sha256_file(f) != entry["sha256"]:
                raise BundleError(f"{f}: sha256 does not match the manifest (modified or corrupt)")
    return manifest



def is_bundle(folder: Path) -> bool:
    """Whether `folder` is a qwen-mobile bundle by its own word: a manifest.json whose format says so."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == BUNDLE_FORMAT


def check_out(out: str | Path, force: bool, source_dir: Path | None = None) -> None:
    """Refuse an --out that cannot be written, or whose replacement would destroy something that is not a bundle.

    Runs before any work (a 4B export must not find out after an hour), and again just before the rename.
    --force replaces only a qwen-mobile bundle holding nothing but its own files, or an empty folder.
    """
    out = Path(out)
    target = out.resolve()
    if source_dir is not None:
        source = Path(source_dir).resolve()
        if target == source or source in target.parents:
            raise FileExistsError(f"--out {out} is {'SOURCE itself' if target == source else 'inside SOURCE'} "
                                  f"({source}); write the bundle outside the checkpoint folder")
    if out.is_symlink():
        raise FileExistsError(f"--out {out} is a symbolic link; give the real folder")
    if out.exists():
        if not force:
            raise FileExistsError(f"--out {out} already exists; pass --force to replace it")
        if not out.is_dir():
            raise FileExistsError(f"--out {out} is a file, not a bundle folder; --force replaces only a "
                                  "qwen-mobile bundle or an empty folder")
        entries = sorted(out.iterdir())
        if entries:
            if not is_bundle(out):
                raise FileExistsError(f"--out {out} is not a qwen-mobile bundle (no {MANIFEST} saying so) and not "
                                      f"empty ({len(entries)} entries, e.g. '{entries[0].name}'); --force replaces "
                                      "only a bundle or an empty folder")
            listed = set(json.loads((out / MANIFEST).read_text()).get("files", {})) | {MANIFEST}
            extra = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                           if p.is_file() and p.relative_to(out).as_posix() not in listed)
            if extra:
                raise FileExistsError(f"--out {out}: the bundle holds files its manifest does not list (e.g. "
                                      f"'{extra[0]}'); move them away or choose another --out")
    # The nearest folder that exists must take a new entry: probe it, since permission bits say nothing to root
    # and a read-only mount says nothing to os.access.
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"--out {out}: {parent} is a file, not a folder")
    try:
        tempfile.TemporaryDirectory(prefix=".qwen-mobile-probe-", dir=parent).cleanup()
    except OSError as err:
        raise PermissionError(f"--out {out}: cannot create anything in {parent} ({err.strerror})") from None


def _folder_mode() -> int:
    """The mode a plain `mkdir` would give: 0777 less the umask (mkdtemp's 0700 would hide bundles from others)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


@contextmanager
def staged_bundle(out: Path, force: bool, source_dir: Path | None = None):
    """Yield a temporary folder beside `out`; on success it replaces `out`, on failure it is removed.

    The old bundle is renamed aside, the new one renamed in, and only then is the old one deleted: a crash at any
    point leaves either the old or the new bundle under `out` (and at worst a hidden `.NAME.old-*` folder).
    """
    out = Path(out)
    check_out(out, force, source_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        os.chmod(staging, _folder_mode())
        yield staging
        check_out(out, force, source_dir)  # the folder may have changed during a long export
        trash = None
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / out.name)
        try:
            os.replace(staging, out)
        except BaseException:
            if trash is not None:
                os.replace(trash / out.name, out)
                trash.rmdir()
            raise
        if trash is not None:
            shutil.rmtree(trash)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_manifest(folder: Path, manifest: dict) -> dict:
    manifest = dict(manifest, files=file_entries(folder))
    validate_manifest(manifest)
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, folder / MANIFEST)
    return manifest


class Bundle:
    """A verified bundle folder: manifest, tokenizer and the program with our kernels."""

    def __init__(self, folder: str | Path, *, verify: bool = True):
        self.folder = Path(folder)
        self.manifest = load_manifest(self.folder, check_hashes=verify)
        self.hash = bundle_hash(self.manifest)
        m = self.manifest
        self.max_seq_len: int = m["state"]["max_seq_len"]
        self.max_prefill_tokens: int = m["program"]["methods"][PREFILL_METHOD]["max_tokens"]
        self.vocab_size: int = m["model"]["config"]["vocab_size"]
        self.stop_ids: set[int] = set(m["tokenizer"]["stop_ids"])
        self.buffers: list[dict] = m["state"]["buffers"]
        self.vision: dict | None = m.get("vision")  # image sizes, token ids (CONTRACT.md "Images"); None: text only
        if m["recipe"]["name"] != "xnnpack":
            raise BundleError(
                f"{self.folder}: a {m['recipe']['name']} bundle runs on Apple devices (Core ML); this host runtime "
                "runs ExecuTorch XNNPACK bundles. Its numerics are checked on Linux at export by the MIL evaluator; "
                "on a Mac run scripts/verify_coreml_on_mac.py (see export/coreml/README.md)")
        self.tokenizer = None
        if m["tokenizer"]["file"]:
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(self.folder / m["tokenizer"]["file"]))
        from .program import BundleProgram  # loads our kernels: only when a bundle is opened

        t0 = time.perf_counter()
        self.program = BundleProgram(self.folder / m["program"]["file"], max_prefill_tokens=self.max_prefill_tokens,
                                     kernel_namespaces=m["program"]["kernel_namespaces"])
        self.load_seconds = time.perf_counter() - t0
        self._check_manifest_against_program()

    def _check_manifest_against_program(self) -> None:
        """The manifest is not hashed by itself: an edited number would only fail mid-generation, so the numbers the
        runtime relies on are compared with the program's own metadata methods here."""
        recorded = self.program.metadata()
        m = self.manifest
        pairs = (("state.max_seq_len", self.max_seq_len, "get_max_context_len"),
                 ("program.methods.forward.max_tokens", self.max_prefill_tokens, "get_max_seq_len"),
                 ("model.config.vocab_size", self.vocab_size, "get_vocab_size"),
                 ("tokenizer.stop_ids", sorted(self.stop_ids), "get_eos_ids"))
        for field_name, ours, method in pairs:
            if method not in recorded:
                continue
            theirs = recorded[method]
            theirs = sorted(theirs if isinstance(theirs, list) else [theirs]) if method == "get_eos_ids" else theirs
            if ours != theirs:
                raise BundleError(f"{self.folder / MANIFEST}: {field_name} is {ours}, but {m['program']['file']} says "
                                  f"{theirs} ({method}); the manifest was edited or belongs to another program: "
                                  "re-export the bundle")
        listed = sorted(image["method"] for image in (self.vision or {}).get("images", []))
        if listed != self.program.image_methods:
            raise BundleError(f"{self.folder / MANIFEST}: vision.images lists {listed}, but {m['program']['file']} has "
                              f"the image methods {self.program.image_methods}; re-export the bundle")

    @property
    def label(self) -> str:
        r = self.manifest["recipe"]
        return f"{self.manifest['model']['id']} {r['name']}-{r['qlinear']}/{r['qembedding']}"

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise BundleError(f"{self.folder}: the bundle has no tokenizer; pass token ids (--prompt-ids)")
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False) if self.tokenizer else ",".join(map(str, ids))

    def chat_template_source(self) -> str | None:
        config_file = self.manifest["tokenizer"].get("config_file")
        if not config_file:
            return None
        return json.loads((self.folder / config_file).read_text()).get("chat_template")

    def session(self) -> "Session":
        from .session import Session

        return Session(self)
