import Foundation
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
}
