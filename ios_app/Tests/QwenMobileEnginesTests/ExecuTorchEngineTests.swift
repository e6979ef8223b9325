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

  func testProbeAcceptsSharedStateAndRefusesSeparateStates() throws {
    let manifest = try nanoManifest()
    let planner = try EnginePlanner(manifest: manifest)
    let shared = ToyProgram(vocab: manifest.vocabSize, shared: true)
    XCTAssertNoThrow(try ExecuTorchEngine(planner: planner, probeSharedState: true, run: shared.run))
    XCTAssertEqual(shared.calls, ["forward", "decode_token", "forward"])
    let separate = ToyProgram(vocab: manifest.vocabSize, shared: false)
    XCTAssertThrowsError(try ExecuTorchEngine(planner: planner, probeSharedState: true, run: separate.run)) {
      XCTAssertTrue("\($0)".contains("do not share the model state"), "\($0)")
    }
  }
}
