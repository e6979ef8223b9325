import ExecuTorch
import Foundation
import QwenMobileAppLogic
import QwenMobileKit
import XCTest

@testable import QwenMobileEngines

/// ExecuTorchEngine's load-time probe with the Module call replaced by a toy model whose logits depend on every token
/// its state has seen: it passes when forward and decode_token share that state and refuses the bundle when each
/// method keeps its own (what an ExecuTorch Module without shared arenas would do).
final class ExecuTorchEngineTests: XCTestCase {
  final class ToyProgram {
    let vocab: Int
    let shared: Bool
    var states: [String: [Int]] = [:]  // method -> tokens in its state (one entry when shared)
    var calls: [String] = []
    init(vocab: Int, shared: Bool) {
      self.vocab = vocab
      self.shared = shared
    }

    func run(_ method: String, _ inputs: [PlannedInput]) throws -> [Float] {
      calls.append(method)
      let key = shared ? "state" : method
      let tokens = inputs.first { $0.name == "tokens" }!.values!
      let start = inputs.first { $0.name == "input_pos" }!.values!.first!
      var state = states[key] ?? []
      if start == 0 { state = [] }  // the program resets at position 0
      state = Array(state.prefix(start)) + tokens
      states[key] = state
      var logits = [Float](repeating: 0, count: vocab)
      for (i, t) in state.enumerated() { logits[(t * 31 + i * 7) % vocab] += Float(i + 1) }
      return logits
    }
  }

  func testSharedStateDecodesThroughDecodeToken() throws {
    let manifest = try nanoManifest()
    let planner = try EnginePlanner(manifest: manifest)
    let shared = ToyProgram(vocab: manifest.vocabSize, shared: true)
    let engine = try ExecuTorchEngine(planner: planner, probeSharedState: true, run: shared.run)
    XCTAssertEqual(shared.calls, ["forward", "decode_token", "forward"])
    XCTAssertEqual(engine.decodeMethod, "decode_token")
  }

  func testSeparateStatesDecodeThroughForwardAndStayCorrect() throws {
    let manifest = try nanoManifest()
    let planner = try EnginePlanner(manifest: manifest)
    let separate = ToyProgram(vocab: manifest.vocabSize, shared: false)
    let engine = try ExecuTorchEngine(planner: planner, probeSharedState: true, run: separate.run)
    XCTAssertEqual(engine.decodeMethod, "forward")
    XCTAssertTrue(engine.runtimeDescription.contains("decode through forward"), engine.runtimeDescription)
    let callsBefore = separate.calls.count
    // A prompt then three decode steps equal one prefill of the whole sequence (the toy's logits see every token).
    let ids = [5, 9, 11, 2, 7, 4]
    var stepwise: [Float] = []
    for step in try planner.prefill(Array(ids.prefix(3)), start: 0) { stepwise = try engine.execute(step) }
    for (i, token) in ids.dropFirst(3).enumerated() {
      stepwise = try engine.execute(try planner.decode(token, position: 3 + i))
    }
    var whole: [Float] = []
    for step in try planner.prefill(ids, start: 0) { whole = try engine.execute(step) }
    XCTAssertEqual(stepwise, whole)
    XCTAssertFalse(separate.calls[callsBefore...].contains("decode_token"))
  }

  func testADecodeThatLosesStateOnEveryPathIsRefused() throws {
    let manifest = try nanoManifest()
    let planner = try EnginePlanner(manifest: manifest)
    let broken = ToyProgram(vocab: manifest.vocabSize, shared: false)
    let forgetful: ExecuTorchEngine.Run = { method, inputs in
      if inputs.first(where: { $0.name == "tokens" })!.shape == [1, 1] { broken.states = [:] }  // T = 1 forgets
      return try broken.run(method, inputs)
    }
    XCTAssertThrowsError(try ExecuTorchEngine(planner: planner, probeSharedState: true, run: forgetful)) {
      XCTAssertTrue("\($0)".contains("through decode_token"), "\($0)")
    }
  }

  // MARK: images

  /// The nano vector's manifest with a vision section: one size, 64x128 pixels = a 2x4 merged grid of 8 tokens.
  func visionManifest() throws -> Manifest {
    let url = repoRoot.appendingPathComponent("tests/apps/vectors/engine_plan_pte.json")
    var root = try JSONNode.load(url)["manifest"].object()
    var program = root["program"] as! [String: Any]
    var methods = program["methods"] as! [String: Any]
    let out: [[String: Any]] = [["name": "out", "shape": [1], "dtype": "float32"]]
    for (name, kind) in [
      ("embed_tokens", "embed"), ("prefill_embeddings", "prefill_embeddings"), ("decode_token_rope", "decode_rope"),
    ] {
      methods[name] = ["kind": kind, "inputs": out, "outputs": out, "min_tokens": 1, "max_tokens": 8]
    }
    methods["encode_image_64x128"] = ["kind": "encode_image", "inputs": out, "outputs": out]
    program["methods"] = methods
    root["program"] = program
    root["vision"] =
      [
        "image_token_id": 150, "vision_start_token_id": 152, "vision_end_token_id": 153, "patch_size": 16,
        "spatial_merge_size": 2, "temporal_patch_size": 2, "pixels": ["dtype": "uint8", "layout": "HWC-RGB"],
        "images": [["method": "encode_image_64x128", "height": 64, "width": 128, "grid_thw": [1, 4, 8], "tokens": 8]],
        "methods": ["embed": "embed_tokens", "prefill": "prefill_embeddings", "decode": "decode_token_rope"],
      ] as [String: Any]
    return try Manifest(json: try JSONNode.parse(try JSONWriter.data(root), source: "vision.json"))
  }

  /// What the engine hands ExecuTorch for each image method: names, dtypes, shapes and values, as qwen-bench's
  /// Model::encode_image / embed / prefill_embeddings / decode_rope pass them.
  final class ImageCalls {
    var log: [(method: String, dtypes: [String], shapes: [[Int]], ints: [[Int64]])] = []
    let hidden: Int
    let vocab: Int
    init(hidden: Int, vocab: Int) {
      self.hidden = hidden
      self.vocab = vocab
    }
    func call(_ method: String, _ inputs: [ValueConvertible]) throws -> [Float] {
      var dtypes: [String] = []
      var shapes: [[Int]] = []
      var ints: [[Int64]] = []
      for input in inputs {
        if let t = input as? Tensor<UInt8> {
          dtypes.append("uint8")
          shapes.append(t.shape)
          ints.append([])
        } else if let t = input as? Tensor<Int64> {
          dtypes.append("int64")
          shapes.append(t.shape)
          ints.append(t.scalars())
        } else if let t = input as? Tensor<Float> {
          dtypes.append("float32")
          shapes.append(t.shape)
          ints.append([])
        }
      }
      log.append((method, dtypes, shapes, ints))
      switch method {
      case "encode_image_64x128": return [Float](repeating: 0.5, count: 8 * hidden)
      case "embed_tokens": return [Float](repeating: 0.25, count: shapes[0][1] * hidden)
      default:
        var logits = [Float](repeating: 0, count: vocab)
        logits[60 + log.count] = 1
        return logits
      }
    }
  }

  func testImageMethodsGetTheContractsTensors() throws {
    let manifest = try visionManifest()
    let calls = ImageCalls(hidden: manifest.hiddenSize!, vocab: manifest.vocabSize)
    let engine = try ExecuTorchEngine(
      planner: try EnginePlanner(manifest: manifest), probeSharedState: false, call: calls.call
    ) { _, _ in
      XCTFail("a text method ran"); return []
    }
    let session = GenerationSession(engine: engine)
    let image = try ImageRGB(width: 128, height: 64, rgb: [UInt8](repeating: 1, count: 64 * 128 * 3))
    var sampler = Sampler(.greedy)
    let result = try session.generate(
      [9, 8, 152, 150, 153, 7], maxNewTokens: 2, sampler: &sampler, stopIDs: [], image: image)
    XCTAssertEqual(result.imageTokens, 8)
    XCTAssertEqual(
      calls.log.map(\.method),
      [
        "encode_image_64x128", "embed_tokens", "embed_tokens", "prefill_embeddings", "prefill_embeddings",
        "decode_token_rope",
      ])
    XCTAssertEqual(calls.log[0].dtypes, ["uint8"])
    XCTAssertEqual(calls.log[0].shapes, [[64, 128, 3]])
    XCTAssertEqual(calls.log[1].shapes, [[1, 8]])
    XCTAssertEqual(calls.log[2].shapes, [[1, 5]])
    XCTAssertEqual(calls.log[2].ints, [[150, 150, 150, 153, 7]])  // the last 3 of 8 image tokens, then text
    XCTAssertEqual(calls.log[4].dtypes, ["float32", "int64", "int64"])
    XCTAssertEqual(calls.log[4].shapes, [[1, 5, 256], [5], [3, 5]])
    XCTAssertEqual(calls.log[4].ints[1], [8, 9, 10, 11, 12])  // cache slots
    XCTAssertEqual(calls.log[4].ints[2], [3, 3, 3, 7, 8, 4, 4, 4, 7, 8, 4, 5, 6, 7, 8])  // rope rows, columns 8..12
    XCTAssertEqual(calls.log[5].shapes, [[1, 1], [1], [1]])
    XCTAssertEqual(calls.log[5].ints, [[Int64(result.ids[0])], [13], [9]])  // slot 13, rotary position 9
  }

  func testImagesOnAModuleWithoutSharedStateStayInPrefillEmbeddings() throws {
    let manifest = try visionManifest()
    let separate = ToyProgram(vocab: manifest.vocabSize, shared: false)
    let calls = ImageCalls(hidden: manifest.hiddenSize!, vocab: manifest.vocabSize)
    let engine = try ExecuTorchEngine(
      planner: try EnginePlanner(manifest: manifest), probeSharedState: true, call: calls.call, run: separate.run)
    XCTAssertEqual(engine.decodeMethod, "forward")
    let session = GenerationSession(engine: engine)
    let image = try ImageRGB(width: 128, height: 64, rgb: [UInt8](repeating: 1, count: 64 * 128 * 3))
    var sampler = Sampler(.greedy)
    _ = try session.generate([152, 150, 153, 7], maxNewTokens: 2, sampler: &sampler, stopIDs: [], image: image)
    // The one decode step: embed_tokens then prefill_embeddings at slot 11, all rope rows 7 (not decode_token_rope).
    XCTAssertFalse(calls.log.map(\.method).contains("decode_token_rope"))
    XCTAssertEqual(calls.log.suffix(2).map(\.method), ["embed_tokens", "prefill_embeddings"])
    XCTAssertEqual(calls.log.last!.ints[1], [11])
    XCTAssertEqual(calls.log.last!.ints[2], [7, 7, 7])
    // A text conversation (forward's own state) cannot take an image later on such a Module: said, not run wrong.
    session.reset()
    _ = try session.generate([5, 6, 7], maxNewTokens: 1, sampler: &sampler, stopIDs: [])
    XCTAssertThrowsError(
      try session.generate([152, 150, 153], maxNewTokens: 1, sampler: &sampler, stopIDs: [], image: image)
    ) { XCTAssertTrue("\($0)".contains("an image must start the conversation"), "\($0)") }
  }

  func testBenchmarkRunnerAddsImageRows() throws {
    let manifest = try visionManifest()
    let calls = ImageCalls(hidden: manifest.hiddenSize!, vocab: manifest.vocabSize)
    let text = ToyProgram(vocab: manifest.vocabSize, shared: true)
    let engine = try ExecuTorchEngine(
      planner: try EnginePlanner(manifest: manifest), probeSharedState: false, call: calls.call, run: text.run)
    let settings = try BenchSettings(promptLengths: [4], generateTokens: 2, runs: 2, warmup: 1, promptSource: "t")
    let report = try BenchmarkRunner(engine: engine, probe: ScriptedProbe(thermal: ["nominal"])).run(
      .init(settings: settings), bundlePath: nil, appVersion: "t", loadMs: nil)
    XCTAssertEqual(report.images.count, 1)
    let row = report.images[0]
    XCTAssertEqual(row.size.method, "encode_image_64x128")
    XCTAssertEqual(row.promptTokens, 3 - 1 + 8 + 16)
    XCTAssertEqual(row.ttftMs.count, 2, "warm-ups dropped")
    XCTAssertEqual(calls.log.filter { $0.method == "encode_image_64x128" }.count, 3)
    // The test card's prompt: the image span, then 16 text ids that are no stop or vision id.
    let embedded = calls.log.filter { $0.method == "embed_tokens" }.prefix(4).flatMap { $0.ints[0] }
    XCTAssertEqual(Array(embedded.prefix(9)), [152] + [Int64](repeating: 150, count: 8))
    XCTAssertFalse(embedded.dropFirst(10).contains { [150, 152, 153].contains($0) })
  }
}
