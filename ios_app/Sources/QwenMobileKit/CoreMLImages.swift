import Foundation

/// The inputs and outputs of one Core ML function as the manifest declares them.
public struct FunctionIO: Equatable {
  public let inputs: [TensorSpec]
  public let outputs: [TensorSpec]
}

/// How a `coreml` bundle runs runtime/CONTRACT.md's image steps ("Images in Core ML bundles"), read from its manifest
/// and checked once, so a bad field is refused when the bundle is opened, with its path:
///
/// - `vision.package.file` (vision.mlpackage) holds one stateless function per size, named like the method
///   (`program.methods.encode_image_<H>x<W>`: `package`, `function`), `rgb [H,W,3]` float32 (the bytes' values
///   0..255: Core ML arrays have no uint8) -> `image_embeds [tokens, hidden]` float32.
/// - The text package(s) hold `embed` (stateless, `tokens [1,C]` int32 -> `embeds [1,C,hidden]`: exactly C ids a call),
///   `prefill_embeddings` (exactly C embeddings with `input_pos [C]` and `rope_pos [3,C]`), its one-token
///   `remainder_function` `decode_embeddings` for the rest of a prompt (never padded), and `decode_rope`
///   (`tokens [1,1]`, `input_pos [1]`, `rope_pos [1]`). C is the prefill chunk (`forward.max_tokens`).
/// - A split model chains the embeddings functions like the token ones: the first package takes `embeds` (or
///   `tokens`), each later one the previous `hidden_out` as `hidden`; a later package runs a `decode_rope` step
///   through its `decode_embeddings` with the rotary position in all three rows (export/coreml/runner.py `_chain`).
public struct CoreMLImageFunctions: Equatable {
  /// runtime/contract.py COREML_IMAGE_FUNCTIONS and COREML_EMBEDDINGS_REMAINDER_FUNCTION.
  public static let embedFunction = "embed"
  public static let prefillFunction = "prefill_embeddings"
  public static let remainderFunction = "decode_embeddings"
  public static let ropeFunction = "decode_rope"
  /// Functions without an MLState (the tower's are all stateless too).
  public static let statelessFunctions: Set<String> = [embedFunction]

  /// vision.package.file: the tower's package, run before the text chain.
  public let visionPackage: String
  /// The prefill chunk C: `embed` and `prefill_embeddings` take exactly C tokens a call.
  public let chunk: Int
  /// encode_image_<H>x<W> -> its function's I/O in the vision package.
  public let encoders: [String: FunctionIO]
  /// Text package file -> function -> I/O, for the image functions each package of the chain has.
  public let io: [String: [String: FunctionIO]]

  /// The inputs each text function may take and the dtype it must have; anything else is a field this app cannot
  /// fill.
  static let inputDtypes = [
    "tokens": "int32", "embeds": "float32", "hidden": "float32", "input_pos": "int32", "rope_pos": "int32",
    "conv_in": "float32", "rec_in": "float32",
  ]

  init(program: JSONNode, vision: JSONNode, spec: VisionSpec, packages: [PackageSpec], hidden: Int) throws {
    let methods = program["methods"]
    let package = vision["package"]
    visionPackage = try package["file"].string()
    if vision["pixels"]["program_dtype"].exists, try vision["pixels"]["program_dtype"].string() != "float32" {
      throw vision["pixels"]["program_dtype"].fail("this app feeds the pixels to Core ML as float32")
    }
    chunk = try methods[Manifest.prefillMethod]["max_tokens"].int()
    let names: [(method: String, function: String)] = [
      (VisionSpec.embedMethod, CoreMLImageFunctions.embedFunction),
      (VisionSpec.prefillMethod, CoreMLImageFunctions.prefillFunction),
      (VisionSpec.decodeMethod, CoreMLImageFunctions.ropeFunction),
    ]
    for (method, function) in names where try methods[method]["function"].optionalString() != function {
      throw methods[method]["function"].fail("a coreml bundle runs \(method) as Core ML function '\(function)'")
    }
    let remainder = methods[VisionSpec.prefillMethod]["remainder_function"]
    guard try remainder.optionalString() == CoreMLImageFunctions.remainderFunction else {
      throw remainder.fail(
        "expected '\(CoreMLImageFunctions.remainderFunction)' (the one-token function for the rest of a prompt)")
    }
    for method in [VisionSpec.embedMethod, VisionSpec.prefillMethod] {
      guard try methods[method]["max_tokens"].int() == chunk else {
        throw methods[method]["max_tokens"].fail("must equal forward's prefill chunk \(chunk)")
      }
    }

    var encoders: [String: FunctionIO] = [:]
    for size in spec.images {
      let node = methods[size.method]
      guard try node["package"].optionalString() == visionPackage else {
        throw node["package"].fail("expected '\(visionPackage)' (vision/package/file)")
      }
      guard try node["function"].optionalString() == size.method else {
        throw node["function"].fail("expected '\(size.method)' (the function is named like the method)")
      }
      let io = FunctionIO(
        inputs: try node["inputs"].array().map(TensorSpec.init),
        outputs: try node["outputs"].array().map(TensorSpec.init))
      try CoreMLImageFunctions.expect(
        io.inputs, [("rgb", [size.height, size.width, 3], "float32")], node["inputs"])
      try CoreMLImageFunctions.expect(
        io.outputs, [("image_embeds", [size.tokens, hidden], "float32")], node["outputs"])
      encoders[size.method] = io
    }
    self.encoders = encoders

    // One package: the methods' own I/O. A chain: each package's entry (program.packages[i].<function>).
    var io: [String: [String: FunctionIO]] = [:]
    guard let first = packages.first else { throw program["packages"].fail("no text package") }
    let embedNode = methods[VisionSpec.embedMethod]
    let embed = FunctionIO(
      inputs: try embedNode["inputs"].array().map(TensorSpec.init),
      outputs: try embedNode["outputs"].array().map(TensorSpec.init))
    try CoreMLImageFunctions.expect(embed.inputs, [("tokens", [1, chunk], "int32")], embedNode["inputs"])
    try CoreMLImageFunctions.expect(embed.outputs, [("embeds", [1, chunk, hidden], "float32")], embedNode["outputs"])
    if packages.count == 1 {
      let prefill = methods[VisionSpec.prefillMethod]
      let rope = methods[VisionSpec.decodeMethod]
      guard prefill["remainder"].exists else { throw prefill["remainder"].fail("missing (decode_embeddings' I/O)") }
      io[first.file] = [
        CoreMLImageFunctions.embedFunction: embed,
        CoreMLImageFunctions.prefillFunction: FunctionIO(
          inputs: try prefill["inputs"].array().map(TensorSpec.init),
          outputs: try prefill["outputs"].array().map(TensorSpec.init)),
        CoreMLImageFunctions.remainderFunction: FunctionIO(
          inputs: try prefill["remainder"]["inputs"].array().map(TensorSpec.init),
          outputs: try prefill["remainder"]["outputs"].array().map(TensorSpec.init)),
        CoreMLImageFunctions.ropeFunction: FunctionIO(
          inputs: try rope["inputs"].array().map(TensorSpec.init),
          outputs: try rope["outputs"].array().map(TensorSpec.init)),
      ]
    } else {
      let entries = try program["packages"].array()
      for (index, (entry, package)) in zip(entries, packages).enumerated() {
        var functions = [CoreMLImageFunctions.prefillFunction, CoreMLImageFunctions.remainderFunction]
        if index == 0 { functions += [CoreMLImageFunctions.embedFunction, CoreMLImageFunctions.ropeFunction] }
        var perFunction: [String: FunctionIO] = [:]
        for function in functions {
          guard let declared = package.io[function] else {
            throw entry[function].fail("missing (package \(package.file) of a chain with images runs it)")
          }
          perFunction[function] = FunctionIO(inputs: declared.inputs, outputs: declared.outputs)
        }
        io[package.file] = perFunction
      }
    }
    // Every input of every function is one this app fills, with the dtype it fills it with; the rotary positions
    // are [3,T] for the embeddings functions and [1] for decode_rope (CONTRACT.md).
    let entries = packages.count == 1 ? [] : try program["packages"].array()
    for (index, package) in packages.enumerated() {
      for (function, declared) in io[package.file] ?? [:] {
        let base =
          packages.count == 1 ? CoreMLImageFunctions.methodField(methods, function) : entries[index][function]
        let fields = try base["inputs"].array()
        for (input, field) in zip(declared.inputs, fields) {
          guard let dtype = CoreMLImageFunctions.inputDtypes[input.name] else {
            throw field["name"].fail("'\(input.name)' is not an input this app fills")
          }
          guard input.dtype == dtype else { throw field["dtype"].fail("\(input.name) must be \(dtype)") }
          guard input.name == "rope_pos" else { continue }
          let isRope = function == CoreMLImageFunctions.ropeFunction
          let ok = isRope ? input.shape == [.fixed(1)] : input.shape.count == 2 && input.shape[0] == .fixed(3)
          guard ok else { throw field["shape"].fail("rope_pos of \(function) must be \(isRope ? "[1]" : "[3,T]")") }
        }
      }
    }
    self.io = io
  }

  /// A one-package bundle's field for a function (decode_embeddings is prefill_embeddings' `remainder`).
  static func methodField(_ methods: JSONNode, _ function: String) -> JSONNode {
    switch function {
    case CoreMLImageFunctions.embedFunction: return methods[VisionSpec.embedMethod]
    case CoreMLImageFunctions.prefillFunction: return methods[VisionSpec.prefillMethod]
    case CoreMLImageFunctions.remainderFunction: return methods[VisionSpec.prefillMethod]["remainder"]
    default: return methods[VisionSpec.decodeMethod]
    }
  }

  static func expect(_ got: [TensorSpec], _ want: [(String, [Int], String)], _ node: JSONNode) throws {
    let describe = { (specs: [(String, [Int], String)]) in
      specs.map { "\($0.0) \($0.1) \($0.2)" }.joined(separator: ", ")
    }
    let have = got.map { ($0.name, $0.concreteShape(tokens: -1), $0.dtype) }
    guard have.count == want.count, zip(have, want).allSatisfy({ $0.0 == $1.0 && $0.1 == $1.1 && $0.2 == $1.2 })
    else {
      throw node.fail("expected \(describe(want)), found \(describe(have))")
    }
  }
}
