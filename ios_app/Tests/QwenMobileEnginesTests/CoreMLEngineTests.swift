import CoreML
import Foundation
import QwenMobileAppLogic
import QwenMobileKit
import XCTest

@testable import QwenMobileEngines

/// CoreMLEngine's own logic with the Core ML call replaced by a fake: the package chain (hidden_out of one package is
/// the next one's hidden), the host-side delta-net state (conv_out/rec_out of one call are the next call's
/// conv_in/rec_in, fresh zeros at position 0), int32 ids, and logits read from the last package. Uses only
/// MLMultiArray and feature providers, which the stubs implement on Linux and Core ML on a Mac.
final class CoreMLEngineTests: XCTestCase {
  struct Seen {
    let package: String
    let function: String
    let inputs: [String: MLMultiArray]
    let outputs: [String: MLMultiArray]
  }

  func splitManifest() throws -> Manifest {
    let url = repoRoot.appendingPathComponent("tests/apps/vectors/engine_plan_coreml_split.json")
    return try Manifest(json: try JSONNode.load(url)["manifest"])
  }

  func fakeEngine(_ manifest: Manifest, next: Int) throws -> (CoreMLEngine, () -> [Seen]) {
    var seen: [Seen] = []
    let planner = try EnginePlanner(manifest: manifest)
    let engine = CoreMLEngine(planner: planner, computeUnits: .cpuOnly) { package, function, provider in
      var inputs: [String: MLMultiArray] = [:]
      for name in provider.featureNames { inputs[name] = provider.featureValue(for: name)?.multiArrayValue }
      let spec = manifest.packages.first { $0.file == package }!.io[function]!
      let tokens = inputs["input_pos"]!.count
      var outputs: [String: MLMultiArray] = [:]
      for out in spec.outputs {
        let array = try MLMultiArray(
          shape: out.concreteShape(tokens: tokens).map { NSNumber(value: $0) }, dataType: .float32)
        // Logits pick `next`; every state and hidden output is non-zero, so reusing one where zeros belong shows.
        array.withUnsafeMutableBytes { raw, _ in raw.bindMemory(to: Float.self)[out.name == "logits" ? next : 0] = 7 }
        outputs[out.name] = array
      }
      seen.append(Seen(package: package, function: function, inputs: inputs, outputs: outputs))
      return try MLDictionaryFeatureProvider(dictionary: outputs)
    }
    return (engine, { seen })
  }

  func testChainAndHostStateAcrossSteps() throws {
    let manifest = try splitManifest()
    let (engine, seen) = try fakeEngine(manifest, next: 42)
    let session = GenerationSession(engine: engine)
    var sampler = Sampler(.greedy)
    // 10 prompt tokens with an 8-token chunk: one prefill call and two decode calls per package, then one decode.
    let result = try session.generate(Array(100..<110), maxNewTokens: 2, sampler: &sampler, stopIDs: [])
    XCTAssertEqual(result.ids, [42, 42], "logits come from the last package")
    let calls = seen()
    let files = manifest.packages.map(\.file)
    XCTAssertEqual(calls.count, 4 * files.count)
    for step in 0..<4 {
      let chain = Array(calls[(step * files.count)..<((step + 1) * files.count)])
      XCTAssertEqual(chain.map(\.package), files)
      XCTAssertEqual(chain.map(\.function), Array(repeating: step == 0 ? "prefill" : "decode", count: files.count))
      let ids = chain[0].inputs["tokens"]!
      XCTAssertEqual(ids.dataType, .int32)
      for k in 1..<chain.count {
        XCTAssertTrue(chain[k].inputs["hidden"] === chain[k - 1].outputs["hidden_out"], "step \(step) package \(k)")
        XCTAssertNil(chain[k].inputs["tokens"])
      }
      for (k, call) in chain.enumerated() where call.inputs["conv_in"] != nil {
        if step == 0 {
          let zeros = call.inputs["conv_in"]!.withUnsafeBytes { $0.allSatisfy { $0 == 0 } }
          XCTAssertTrue(zeros, "position 0 starts from zero host state")
        } else {
          let previous = calls[(step - 1) * files.count + k]
          XCTAssertTrue(call.inputs["conv_in"] === previous.outputs["conv_out"], "step \(step) package \(k)")
          XCTAssertTrue(call.inputs["rec_in"] === previous.outputs["rec_out"], "step \(step) package \(k)")
        }
      }
    }
    XCTAssertTrue(calls.contains { $0.inputs["conv_in"] != nil }, "the split nano has host-side delta-net state")
    // A new conversation starts again from zeros, not from the last outputs.
    session.reset()
    _ = try session.prefill(Array(1..<9))
    let restart = seen().suffix(files.count)
    for call in restart where call.inputs["conv_in"] != nil {
      XCTAssertTrue(call.inputs["conv_in"]!.withUnsafeBytes { $0.allSatisfy { $0 == 0 } })
    }
  }
}

/// CoreMLEngine's image path (CONTRACT.md, "Images in Core ML bundles") against the calls Python made: the vectors of
/// tests/apps/make_engine_plans.py (runtime/session.py's image questions over export/coreml/runner.py and the numpy
/// evaluator, on the tiny VLM exported with `--image-sizes 32,32x48`, one package and a chain of three). The fake
/// Core ML call answers each call as Python's program did where it matters: `embed` and `encode_image_*` return
/// Python's outputs, so the embeddings the engine splices and feeds must sum row by row as Python's; logits pick the
/// token Python sampled after that call; hidden and state outputs are non-zero markers.
final class CoreMLEngineImageTests: XCTestCase {
  func vector(_ name: String) throws -> JSONNode {
    try JSONNode.load(repoRoot.appendingPathComponent("tests/apps/vectors").appendingPathComponent(name))
  }

  /// The field path of a BundleError "source: field 'a/b': ...".
  func field(of error: Error) -> String? {
    guard let e = error as? BundleError, let start = e.message.range(of: "field '") else { return nil }
    let rest = e.message[start.upperBound...]
    return rest.firstIndex(of: "'").map { String(rest[..<$0]) }
  }

  struct Seen {
    let package: String
    let function: String
    let inputs: [String: MLMultiArray]
    let outputs: [String: MLMultiArray]
  }

  static func ints(_ array: MLMultiArray) -> [Int] {
    array.withUnsafeMutableBytes { raw, _ in raw.bindMemory(to: Int32.self).prefix(array.count).map { Int($0) } }
  }

  static func floats(_ array: MLMultiArray) -> [Double] {
    array.withUnsafeMutableBytes { raw, _ in raw.bindMemory(to: Float.self).prefix(array.count).map { Double($0) } }
  }

  static func dtype(_ array: MLMultiArray) -> String {
    switch array.dataType {
    case .int32: return "int32"
    case .float32: return "float32"
    case .float16: return "float16"
    case .double: return "float64"
    }
  }

  static func array(_ values: [Float], shape: [Int]) throws -> MLMultiArray {
    let array = try MLMultiArray(shape: shape.map { NSNumber(value: $0) }, dataType: .float32)
    XCTAssertEqual(array.count, values.count, "shape \(shape)")
    array.withUnsafeMutableBytes { raw, _ in
      let p = raw.bindMemory(to: Float.self)
      for (i, v) in values.enumerated() { p[i] = v }
    }
    return array
  }

  /// float32 little-endian bytes in base64 (the vector's encoding of Python's outputs) -> values.
  static func decodeFloats(_ text: String) throws -> [Float] {
    guard let data = Data(base64Encoded: text), data.count % 4 == 0 else { throw BundleError("bad base64 floats") }
    return stride(from: 0, to: data.count, by: 4).map { i in
      let bits = data[(data.startIndex + i)..<(data.startIndex + i + 4)].enumerated().reduce(UInt32(0)) {
        $0 | UInt32($1.element) << (8 * UInt32($1.offset))
      }
      return Float(bitPattern: bits)
    }
  }

  /// An engine whose Core ML call replays `want` (the recorded calls, in order) and logs what it was given.
  func replayEngine(_ manifest: Manifest, _ want: [JSONNode]) throws -> (CoreMLEngine, () -> [Seen]) {
    var seen: [Seen] = []
    let hidden = manifest.hiddenSize!
    let engine = CoreMLEngine(planner: try EnginePlanner(manifest: manifest), computeUnits: .cpuOnly) {
      package, function, provider in
      var inputs: [String: MLMultiArray] = [:]
      for name in provider.featureNames { inputs[name] = provider.featureValue(for: name)?.multiArrayValue }
      let i = seen.count
      guard i < want.count else { throw BundleError("call \(i) (\(package) \(function)): Python made \(want.count)") }
      let w = want[i]
      var outputs: [String: MLMultiArray] = [:]
      let marker = Float(i + 1)
      for name in try w["outputs"].array().map({ try $0.string() }) {
        switch name {
        case "embeds", "image_embeds":
          let values = try CoreMLEngineImageTests.decodeFloats(try w["output_f32le_base64"][name].string())
          let shape = name == "embeds" ? [1, values.count / hidden, hidden] : [values.count / hidden, hidden]
          outputs[name] = try CoreMLEngineImageTests.array(values, shape: shape)
        case "logits":
          var logits = [Float](repeating: 0, count: manifest.vocabSize)
          if w["next_token"].exists { logits[try w["next_token"].int()] = 1 }
          outputs[name] = try CoreMLEngineImageTests.array(logits, shape: [1, 1, manifest.vocabSize])
        case "hidden_out":
          let t = inputs["input_pos"]?.count ?? 0
          outputs[name] = try CoreMLEngineImageTests.array(
            [Float](repeating: marker, count: t * hidden), shape: [1, t, hidden])
        case "conv_out", "rec_out":
          let input = inputs[name == "conv_out" ? "conv_in" : "rec_in"]!
          outputs[name] = try CoreMLEngineImageTests.array(
            [Float](repeating: marker, count: input.count), shape: input.shape.map(\.intValue))
        default:
          throw BundleError("unexpected output \(name)")
        }
      }
      seen.append(Seen(package: package, function: function, inputs: inputs, outputs: outputs))
      return try MLDictionaryFeatureProvider(dictionary: outputs)
    }
    return (engine, { seen })
  }

  func replay(_ file: String) throws -> Int {
    let vector = try vector(file)
    let manifest = try Manifest(json: vector["manifest"])
    XCTAssertNotNil(manifest.coreMLImages, file)
    var compared = 0
    for caseName in try vector["cases"].keys() {
      let c = vector["cases"][caseName]
      let want = try c["calls"].array()
      let (engine, seen) = try replayEngine(manifest, want)
      let session = GenerationSession(engine: engine)
      for turn in try c["turns"].array() {
        let generated = try turn["generated_ids"].ints()
        var image: ImageRGB?
        if turn["image"].exists {
          image = ImageRGB.testCard(height: try turn["image"]["height"].int(), width: try turn["image"]["width"].int())
        }
        var sampler = Sampler(.greedy)
        let result = try session.generate(
          try turn["prompt_ids"].ints(), maxNewTokens: generated.count, sampler: &sampler, stopIDs: [], image: image)
        XCTAssertEqual(result.ids, generated, "\(file) \(caseName)")
      }
      let calls = seen()
      XCTAssertEqual(calls.count, want.count, "\(file) \(caseName): number of calls")
      for (i, (got, w)) in zip(calls, want).enumerated() {
        let label = "\(file) \(caseName) call \(i) (\(try w["function"].string()))"
        XCTAssertEqual(got.package, try w["package"].string(), label)
        XCTAssertEqual(got.function, try w["function"].string(), label)
        let inputs = try w["inputs"].array()
        XCTAssertEqual(got.inputs.keys.sorted(), try inputs.map { try $0["name"].string() }.sorted(), label)
        for wi in inputs {
          let name = try wi["name"].string()
          guard let g = got.inputs[name] else { continue }
          XCTAssertEqual(g.shape.map(\.intValue), try wi["shape"].ints(), "\(label) \(name)")
          XCTAssertEqual(CoreMLEngineImageTests.dtype(g), try wi["dtype"].string(), "\(label) \(name)")
          if wi["values"].exists {
            XCTAssertEqual(CoreMLEngineImageTests.ints(g), try wi["values"].ints(), "\(label) \(name)")
          }
          if wi["sum"].exists {  // rgb: the test card's bytes as float values
            XCTAssertEqual(CoreMLEngineImageTests.floats(g).reduce(0, +), try wi["sum"].double(), "\(label) \(name)")
          }
          if wi["row_sums"].exists {  // embeds [1,T,hidden]: Python's embed/encode outputs, spliced as Python did
            let values = CoreMLEngineImageTests.floats(g)
            let width = values.count / g.shape[1].intValue
            let sums = stride(from: 0, to: values.count, by: width).map { values[$0..<($0 + width)].reduce(0, +) }
            let tolerance = 1e-5 * max(1, try wi["abs_sum"].double())
            for (k, (s, r)) in zip(sums, try wi["row_sums"].array().map { try $0.double() }).enumerated() {
              XCTAssertEqual(s, r, accuracy: tolerance, "\(label) embeds row \(k)")
            }
          }
        }
        // The host-side delta-net state: zeros when a call starts at position 0, else the previous stateful call's
        // conv_out/rec_out of the same package (whatever function it ran).
        if let conv = got.inputs["conv_in"], let rec = got.inputs["rec_in"] {
          let previous = calls[..<i].last { $0.package == got.package && $0.outputs["conv_out"] != nil }
          if CoreMLEngineImageTests.ints(got.inputs["input_pos"]!).first == 0 || previous == nil {
            XCTAssertTrue(CoreMLEngineImageTests.floats(conv).allSatisfy { $0 == 0 }, "\(label): zeros at 0")
          } else {
            XCTAssertTrue(conv === previous!.outputs["conv_out"], "\(label) conv_in")
            XCTAssertTrue(rec === previous!.outputs["rec_out"], "\(label) rec_in")
          }
        }
        if let h = got.inputs["hidden"] {
          XCTAssertTrue(h === calls[i - 1].outputs["hidden_out"], "\(label): hidden is the previous package's")
        }
        compared += 1
      }
    }
    return compared
  }

  func testImagePromptOnOnePackageEqualsPythonsCalls() throws {
    XCTAssertGreaterThan(try replay("engine_plan_coreml_vision.json"), 30)
  }

  func testImagePromptThroughASplitChainEqualsPythonsCalls() throws {
    let calls = try replay("engine_plan_coreml_vision_split.json")
    XCTAssertGreaterThan(calls, 90)
    let manifest = try Manifest(json: try vector("engine_plan_coreml_vision_split.json")["manifest"])
    XCTAssertGreaterThanOrEqual(manifest.packages.count, 3, "the split vector chains at least three packages")
  }

  func testATextOnlyBundleRefusesImages() throws {
    let url = repoRoot.appendingPathComponent("tests/apps/vectors/engine_plan_coreml_split.json")
    let manifest = try Manifest(json: try JSONNode.load(url)["manifest"])
    XCTAssertNil(manifest.vision)
    let engine = CoreMLEngine(planner: try EnginePlanner(manifest: manifest), computeUnits: .cpuOnly) { _, _, _ in
      XCTFail("nothing may run")
      throw BundleError("ran")
    }
    for call in [
      {
        _ = try engine.encodeImage(
          [0, 0, 0],
          size: ImageSizeSpec(method: "encode_image_1x1", height: 1, width: 1, gridTHW: [1, 2, 2], tokens: 1))
      },
      { _ = try engine.embed([1]) }, { _ = try engine.decodeRope(1, slot: 3, rope: 2) },
    ] {
      XCTAssertThrowsError(try call()) {
        XCTAssertTrue("\($0)".contains("no vision section: this bundle takes no images"), "\($0)")
      }
    }
    let session = GenerationSession(engine: engine)
    var sampler = Sampler(.greedy)
    let image = ImageRGB.testCard(height: 32, width: 32)
    XCTAssertThrowsError(try session.generate([1, 2], maxNewTokens: 1, sampler: &sampler, image: image)) {
      XCTAssertTrue("\($0)".contains("no vision section"), "\($0)")
    }
    XCTAssertEqual(
      ImageSupport.unavailableReason(manifest: manifest, engine: engine)?.contains("no vision section"), true)
  }

  func testAVisionBundleEnablesTheImageButtonOnCoreML() throws {
    let manifest = try Manifest(json: try vector("engine_plan_coreml_vision.json")["manifest"])
    let engine = CoreMLEngine(planner: try EnginePlanner(manifest: manifest), computeUnits: .cpuOnly)
    XCTAssertNil(ImageSupport.unavailableReason(manifest: manifest, engine: engine))
  }

  /// The benchmark's image rows on the Core ML engine: per size of the vision bundle, the test card through
  /// `encode_image_<H>x<W>` before the text; a fake that answers every function with zeros of its declared outputs.
  func testBenchmarkRunnerAddsImageRowsOnCoreML() throws {
    let manifest = try Manifest(json: try vector("engine_plan_coreml_vision.json")["manifest"])
    let images = try XCTUnwrap(manifest.coreMLImages)
    var encoded: [String] = []
    let engine = CoreMLEngine(planner: try EnginePlanner(manifest: manifest), computeUnits: .cpuOnly) {
      package, function, _ in
      let declared: [TensorSpec]
      if package == images.visionPackage {
        encoded.append(function)
        declared = images.encoders[function]!.outputs
      } else if let io = images.io[package]?[function] {
        declared = io.outputs
      } else {
        declared = function == "prefill" ? manifest.forward.outputs : manifest.decode.outputs
      }
      var outputs: [String: MLMultiArray] = [:]
      for out in declared {
        outputs[out.name] = try MLMultiArray(
          shape: out.concreteShape(tokens: 1).map { NSNumber(value: $0) }, dataType: .float32)
      }
      return try MLDictionaryFeatureProvider(dictionary: outputs)
    }
    let settings = try BenchSettings(promptLengths: [4], generateTokens: 2, runs: 2, warmup: 1, promptSource: "t")
    let report = try BenchmarkRunner(engine: engine, probe: ScriptedProbe(thermal: ["nominal"])).run(
      .init(settings: settings), bundlePath: nil, appVersion: "t", loadMs: nil)
    XCTAssertEqual(report.images.map(\.size.method), ["encode_image_32x32", "encode_image_32x48"])
    XCTAssertEqual(report.images.map(\.promptTokens), [2 + 16 + 16, 2 + 24 + 16])
    XCTAssertEqual(report.images.map(\.ttftMs.count), [2, 2], "warm-ups dropped")
    XCTAssertEqual(
      encoded, Array(repeating: "encode_image_32x32", count: 3) + Array(repeating: "encode_image_32x48", count: 3))
  }

  /// A field the engine needs, broken in the one-package vector's manifest: the error names it.
  func brokenManifest(_ edit: (inout [String: Any]) -> Void) throws -> Manifest {
    var root = try vector("engine_plan_coreml_vision.json")["manifest"].object()
    edit(&root)
    return try Manifest(json: try JSONNode.parse(try JSONWriter.data(root), source: "broken.json"))
  }

  func testBadCoreMLImageFieldsAreNamed() throws {
    func methods(_ root: inout [String: Any], _ edit: (inout [String: Any]) -> Void) {
      var program = root["program"] as! [String: Any]
      var m = program["methods"] as! [String: Any]
      edit(&m)
      program["methods"] = m
      root["program"] = program
    }
    func method(_ name: String, _ edit: @escaping (inout [String: Any]) -> Void) -> (inout [String: Any]) -> Void {
      { root in
        methods(&root) { m in
          var entry = m[name] as! [String: Any]
          edit(&entry)
          m[name] = entry
        }
      }
    }
    let cases: [(String, (inout [String: Any]) -> Void)] = [
      (
        "program/methods/prefill_embeddings/remainder_function",
        method("prefill_embeddings") { $0["remainder_function"] = nil }
      ),
      ("program/methods/decode_token_rope/function", method("decode_token_rope") { $0["function"] = "decode" }),
      (
        "program/methods/encode_image_32x48/package", method("encode_image_32x48") { $0["package"] = "model.mlpackage" }
      ),
      (
        "program/methods/encode_image_32x48/inputs",
        method("encode_image_32x48") { $0["inputs"] = [["name": "rgb", "shape": [32, 48, 3], "dtype": "uint8"]] }
      ),
      ("program/methods/embed_tokens/max_tokens", method("embed_tokens") { $0["max_tokens"] = 4 }),
      (
        "program/methods/decode_token_rope/inputs/2/shape",
        method("decode_token_rope") { entry in
          var inputs = entry["inputs"] as! [[String: Any]]
          inputs[2]["shape"] = [3, 1]
          entry["inputs"] = inputs
        }
      ),
      (
        "vision/package/file",
        { root in
          var vision = root["vision"] as! [String: Any]
          var package = vision["package"] as! [String: Any]
          package["file"] = nil
          vision["package"] = package
          root["vision"] = vision
        }
      ),
    ]
    for (path, edit) in cases {
      XCTAssertThrowsError(try brokenManifest(edit), path) { XCTAssertEqual(field(of: $0), path, "\($0)") }
    }
  }
}
