import Foundation

/// One tensor an engine call takes or returns. A dimension is a number or a symbol ("T": the call's token count).
public struct TensorSpec: Equatable {
  public enum Dim: Equatable {
    case fixed(Int)
    case symbol(String)
  }
  public let name: String
  public let shape: [Dim]
  public let dtype: String

  /// The shape with every symbolic dimension set to `tokens` (the only symbol manifests use is "T").
  public func concreteShape(tokens: Int) -> [Int] {
    shape.map {
      switch $0 {
      case .fixed(let n): return n
      case .symbol: return tokens
      }
    }
  }

  init(_ node: JSONNode) throws {
    name = try node["name"].string()
    dtype = try node["dtype"].string()
    shape = try node["shape"].array().map { dim in
      if let s = dim.value as? String { return .symbol(s) }
      return .fixed(try dim.int())
    }
  }
}

/// A program method (a `.pte` method, or a Core ML function) as the manifest describes it.
public struct MethodSpec: Equatable {
  public let key: String  // the manifest's key: "forward", "decode_token", ...
  public let function: String?  // Core ML function name ("prefill", "decode"); nil for a .pte method
  public let kind: String?
  public let inputs: [TensorSpec]
  public let outputs: [TensorSpec]
  public let minTokens: Int?
  public let maxTokens: Int?

  init(key: String, _ node: JSONNode) throws {
    self.key = key
    function = try node["function"].optionalString()
    kind = try node["kind"].optionalString()
    inputs = try node["inputs"].array().map(TensorSpec.init)
    outputs = try node["outputs"].array().map(TensorSpec.init)
    minTokens = try node["min_tokens"].optionalInt()
    maxTokens = try node["max_tokens"].optionalInt()
  }
}

/// One Core ML package of a (possibly split) model; each function's I/O is recorded only when split (`prefill`,
/// `decode`, and in a bundle with images `prefill_embeddings`, `decode_embeddings`, the first package's `embed` and
/// `decode_rope`).
public struct PackageSpec: Equatable {
  /// The functions a split package entry may describe (export/recipes/coreml.py package_functions).
  public static let functionKeys = [
    "prefill", "decode", "prefill_embeddings", "decode_embeddings", "embed", "decode_rope",
  ]
  public let file: String
  public let layers: [Int]
  public let io: [String: (inputs: [TensorSpec], outputs: [TensorSpec])]

  public static func == (a: PackageSpec, b: PackageSpec) -> Bool {
    a.file == b.file && a.layers == b.layers && a.io.keys.sorted() == b.io.keys.sorted()
      && a.io.keys.allSatisfy { a.io[$0]!.inputs == b.io[$0]!.inputs && a.io[$0]!.outputs == b.io[$0]!.outputs }
  }
}

public struct StateBuffer: Equatable {
  public let name: String
  public let shape: [Int]
  public let dtype: String
  public let seqAxis: Int?
  /// Core ML bundles: "coreml_state" (an MLState) or "host_io" (passed in and out by the app each call).
  public let storage: String?
  public let package: String?
}

public struct FileEntry: Equatable {
  public let sha256: String
  public let bytes: UInt64
}

/// The bundle contract (runtime/schemas/manifest.schema.json, version 2): the fields the app relies on, read with
/// errors that name the field.
public struct Manifest {
  public static let schemaVersion = 2
  public static let fileName = "manifest.json"
  /// The program's token methods (runtime/contract.py, runtime/CONTRACT.md).
  public static let prefillMethod = "forward"
  public static let decodeMethod = "decode_token"

  public let source: String
  public let modelID: String
  public let modelSize: String?
  public let params: Int
  public let vocabSize: Int
  public let recipeName: String  // "xnnpack", "coreml", "coreml-pte"
  public let backend: String
  public let qlinear: String
  public let qembedding: String
  public let groupSize: Int
  public let gdnLayout: String?
  public let programFile: String
  public let methods: [String: MethodSpec]
  public let packages: [PackageSpec]
  public let kernelNamespaces: [String]
  public let maxSeqLen: Int
  public let buffers: [StateBuffer]
  public let tokenizerFile: String?
  public let tokenizerConfigFile: String?
  public let stopIDs: [Int]
  public let thinkingDefault: Bool?
  public let files: [String: FileEntry]
  public let samplePromptIDs: [Int]?
  /// Bundles with image methods only (runtime/CONTRACT.md, "Images"); nil for a text bundle.
  public let vision: VisionSpec?
  /// model.config.hidden_size: the width of the embeddings the image methods pass around (nil when absent).
  public let hiddenSize: Int?
  /// A `coreml` bundle with a vision section: the Core ML functions behind its image methods (nil otherwise).
  public let coreMLImages: CoreMLImageFunctions?

  public var forward: MethodSpec { methods[Manifest.prefillMethod]! }
  public var decode: MethodSpec { methods[Manifest.decodeMethod]! }
  /// The most tokens one prefill call takes (a `.pte`'s dynamic bound, or a Core ML package's fixed chunk).
  public var maxPrefillTokens: Int { forward.maxTokens ?? 1 }
  public var isCoreMLPackage: Bool { recipeName == "coreml" }

  public init(json root: JSONNode) throws {
    source = root.source
    if let version = try? root["schema_version"].int(), version != Manifest.schemaVersion {
      throw BundleError(
        "\(source): field 'schema_version': manifest schema_version \(version), this app reads version "
          + "\(Manifest.schemaVersion); re-export the bundle with this version of qwen-mobile")
    }
    try ManifestSchema.validate(root)
    let model = root["model"]
    modelID = try model["id"].string()
    modelSize = try model["size"].optionalString()
    params = try model["params"].int()
    vocabSize = try model["config"]["vocab_size"].int()
    let recipe = root["recipe"]
    recipeName = try recipe["name"].string()
    guard ["xnnpack", "coreml", "coreml-pte"].contains(recipeName) else {
      throw recipe["name"].fail("'\(recipeName)' is not a recipe this app runs (xnnpack, coreml, coreml-pte)")
    }
    backend = try recipe["backend"].string()
    qlinear = try recipe["qlinear"].string()
    qembedding = try recipe["qembedding"].string()
    groupSize = try recipe["group_size"].int()
    gdnLayout = try recipe["gdn_layout"].optionalString()
    let program = root["program"]
    programFile = try program["file"].string()
    kernelNamespaces = try program["kernel_namespaces"].array().map { try $0.string() }
    var methods: [String: MethodSpec] = [:]
    for key in try program["methods"].keys() {
      let node = program["methods"][key]
      if try node["kind"].optionalString().map({ $0.hasPrefix("state_") }) == true {
        continue  // snapshot methods take the whole state; the app does not call them
      }
      methods[key] = try MethodSpec(key: key, node)
    }
    for required in [Manifest.prefillMethod, Manifest.decodeMethod] where methods[required] == nil {
      throw program["methods"][required].fail("missing (every bundle has forward and decode_token)")
    }
    self.methods = methods
    if methods[Manifest.prefillMethod]!.maxTokens == nil {
      throw program["methods"][Manifest.prefillMethod]["max_tokens"].fail("missing")
    }
    if program["packages"].exists {
      packages = try program["packages"].array().map { p in
        var io: [String: (inputs: [TensorSpec], outputs: [TensorSpec])] = [:]
        for function in PackageSpec.functionKeys where p[function].exists {
          io[function] = (
            try p[function]["inputs"].array().map(TensorSpec.init),
            try p[function]["outputs"].array().map(TensorSpec.init)
          )
        }
        return PackageSpec(file: try p["file"].string(), layers: try p["layers"].ints(), io: io)
      }
    } else if recipeName == "coreml" {
      // Bundles written before split packages existed: one package, the program file (as mac_verify.py reads them).
      packages = [PackageSpec(file: programFile, layers: [], io: [:])]
    } else {
      packages = []
    }
    let state = root["state"]
    maxSeqLen = try state["max_seq_len"].int()
    buffers = try state["buffers"].array().map { b in
      StateBuffer(
        name: try b["name"].string(), shape: try b["shape"].ints(), dtype: try b["dtype"].string(),
        seqAxis: try b["seq_axis"].optionalInt(), storage: try b["storage"].optionalString(),
        package: try b["package"].optionalString())
    }
    let tokenizer = root["tokenizer"]
    tokenizerFile = try tokenizer["file"].optionalString()
    tokenizerConfigFile = try tokenizer["config_file"].optionalString()
    stopIDs = try tokenizer["stop_ids"].ints()
    thinkingDefault = tokenizer["thinking_default"].exists ? try tokenizer["thinking_default"].bool() : nil
    var files: [String: FileEntry] = [:]
    for name in try root["files"].keys() {
      let entry = root["files"][name]
      let digest = try entry["sha256"].string()
      guard digest.count == 64, digest.allSatisfy({ "0123456789abcdef".contains($0) }) else {
        throw entry["sha256"].fail("not a lower-case hex sha256")
      }
      let bytes = try entry["bytes"].int()
      guard bytes >= 0 else { throw entry["bytes"].fail("negative") }
      files[name] = FileEntry(sha256: digest, bytes: UInt64(bytes))
    }
    guard !files.isEmpty else { throw root["files"].fail("empty") }
    self.files = files
    samplePromptIDs = root["sample_prompt"].exists ? try root["sample_prompt"]["ids"].ints() : nil
    hiddenSize = try model["config"]["hidden_size"].optionalInt()
    if root["vision"].exists {
      let vision = try VisionSpec(root["vision"])
      for name in [VisionSpec.embedMethod, VisionSpec.prefillMethod, VisionSpec.decodeMethod]
        + vision.images.map(\.method)
      where methods[name] == nil {
        throw program["methods"][name].fail("missing (the vision section lists it)")
      }
      guard let hidden = hiddenSize else {
        throw model["config"]["hidden_size"].fail("missing (a bundle with images needs it)")
      }
      self.vision = vision
      coreMLImages =
        recipeName == "coreml"
        ? try CoreMLImageFunctions(
          program: program, vision: root["vision"], spec: vision, packages: packages, hidden: hidden) : nil
    } else {
      vision = nil
      coreMLImages = nil
    }
  }

  /// The bundle's identity: sha256 of "name:sha256;" over its files in code-point order (runtime/bundle.py
  /// bundle_hash); bench results and snapshots refer to it.
  public var bundleHash: String {
    let names = files.keys.sorted {
      Array($0.unicodeScalars.map(\.value)).lexicographicallyPrecedes($1.unicodeScalars.map(\.value))
    }
    let joined = names.map { "\($0):\(files[$0]!.sha256);" }.joined()
    return SHA256.hex(Array(joined.utf8))
  }

  public var totalBytes: UInt64 { files.values.reduce(0) { $0 + $1.bytes } }
}

/// A bundle folder on disk: its manifest read and, unless told otherwise, every listed file checked against its
/// size and sha256 (a bundle copied in half, or modified, is refused before any engine loads it).
public struct BundleFolder {
  public let url: URL
  public let manifest: Manifest

  public init(url: URL, verifyHashes: Bool = true, progress: ((String, Int, Int) -> Void)? = nil) throws {
    self.url = url
    let manifestURL = url.appendingPathComponent(Manifest.fileName)
    guard FileManager.default.fileExists(atPath: manifestURL.path) else {
      throw BundleError("\(url.path): no \(Manifest.fileName); not a qwen-mobile bundle")
    }
    manifest = try Manifest(json: try JSONNode.load(manifestURL))
    if verifyHashes { try verify(progress: progress) }
  }

  public func verify(progress: ((String, Int, Int) -> Void)? = nil) throws {
    let names = manifest.files.keys.sorted()
    for (i, name) in names.enumerated() {
      let entry = manifest.files[name]!
      let parts = name.split(separator: "/", omittingEmptySubsequences: false)
      if name.hasPrefix("/") || parts.contains("..") {
        throw BundleError("\(url.path): file '\(name)' in the manifest points outside the bundle")
      }
      let file = url.appendingPathComponent(name)
      var isDir: ObjCBool = false
      guard FileManager.default.fileExists(atPath: file.path, isDirectory: &isDir), !isDir.boolValue else {
        throw BundleError("\(url.path): file '\(name)' listed in the manifest is missing")
      }
      progress?(name, i, names.count)
      let size = (try FileManager.default.attributesOfItem(atPath: file.path)[.size] as? NSNumber)?.uint64Value
      if size != entry.bytes {
        throw BundleError("\(file.path): \(size ?? 0) bytes, the manifest says \(entry.bytes) (incomplete copy?)")
      }
      let (digest, _) = try SHA256.hexFile(at: file)
      if digest != entry.sha256 {
        throw BundleError("\(file.path): sha256 does not match the manifest (modified or corrupt)")
      }
    }
  }

  public func file(_ relative: String) -> URL { url.appendingPathComponent(relative) }
}
