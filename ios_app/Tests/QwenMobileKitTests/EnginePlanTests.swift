import Foundation
import XCTest

@testable import QwenMobileKit

/// An engine that runs nothing: it records the planned calls and answers each step with logits whose argmax is the
/// token Python's runtime generated at that position, so greedy generation follows the recorded conversation.
final class ReplayEngine: InferenceEngine {
  let planner: EnginePlanner
  var runtimeDescription: String { "replay" }
  var calls: [PlannedCall] = []
  var nextTokenAfter: [Int: Int] = [:]  // position after a step -> the token Python sampled there

  init(manifest: Manifest) throws { planner = try EnginePlanner(manifest: manifest) }

  func execute(_ step: PlannedStep) throws -> [Float] {
    calls += step.calls
    var logits = [Float](repeating: 0, count: planner.manifest.vocabSize)
    if let next = nextTokenAfter[step.startPosition + step.tokens.count] { logits[next] = 1 }
    return logits
  }
}

/// The calls Python's runtime made on real exported nano bundles (tests/apps/make_engine_plans.py: a .pte through
/// runtime/session.py + program.py; Core ML, one package and split over three, through export/coreml/runner.py),
/// reproduced call for call by EnginePlanner driven by GenerationSession.
final class EnginePlanTests: XCTestCase {
  func replay(_ file: String) throws -> Int {
    let vector = try loadVector(file)
    let manifest = try Manifest(json: vector["manifest"])
    var compared = 0
    for caseName in try vector["cases"].keys() {
      let c = vector["cases"][caseName]
      let engine = try ReplayEngine(manifest: manifest)
      let session = GenerationSession(engine: engine)
      // Positions after which each generated token was sampled: the turn's prompt (plus the pending token) ends at
      // `end`, then every generated token but the last is fed one at a time.
      var end = 0
      var pendingCount = 0
      let turns = try c["turns"].array()
      for turn in turns {
        let prompt = try turn["prompt_ids"].ints()
        let generated = try turn["generated_ids"].ints()
        end += pendingCount + prompt.count
        for (j, token) in generated.enumerated() { engine.nextTokenAfter[end + j] = token }
        end += max(generated.count - 1, 0)
        pendingCount = generated.isEmpty ? 0 : 1
      }
      for turn in turns {
        let generated = try turn["generated_ids"].ints()
        var sampler = Sampler(.greedy)
        let result = try session.generate(
          try turn["prompt_ids"].ints(), maxNewTokens: generated.count, sampler: &sampler, stopIDs: [])
        XCTAssertEqual(result.ids, generated, "\(file) \(caseName)")
      }
      let want = try c["calls"].array()
      XCTAssertEqual(engine.calls.count, want.count, "\(file) \(caseName): number of calls")
      for (i, (got, w)) in zip(engine.calls, want).enumerated() {
        let label = "\(file) \(caseName) call \(i)"
        if w["method"].exists {
          XCTAssertNil(got.package, label)
          XCTAssertEqual(got.method, try w["method"].string(), label)
        } else {
          XCTAssertEqual(got.package, try w["package"].string(), label)
          XCTAssertEqual(got.method, try w["function"].string(), label)
          XCTAssertEqual(got.outputs.sorted(), try w["outputs"].array().map { try $0.string() }, label)
        }
        let inputs = try w["inputs"].array()
        XCTAssertEqual(got.inputs.map(\.name), try inputs.map { try $0["name"].string() }, label)
        for (g, wi) in zip(got.inputs, inputs) {
          XCTAssertEqual(g.shape, try wi["shape"].ints(), "\(label) \(g.name)")
          XCTAssertEqual(g.dtype, try wi["dtype"].string(), "\(label) \(g.name)")
          if wi["values"].exists {
            XCTAssertEqual(g.values, try wi["values"].ints(), "\(label) \(g.name)")
          } else {
            XCTAssertNil(g.values, "\(label) \(g.name)")
          }
        }
        compared += 1
      }
    }
    return compared
  }

  func testPteBundlePlan() throws { XCTAssertGreaterThan(try replay("engine_plan_pte.json"), 10) }

  func testCoreMLPackagePlan() throws { XCTAssertGreaterThan(try replay("engine_plan_coreml.json"), 10) }

  func testSplitCoreMLPackageChain() throws {
    XCTAssertGreaterThan(try replay("engine_plan_coreml_split.json"), 30)
    let manifest = try Manifest(json: try loadVector("engine_plan_coreml_split.json")["manifest"])
    let step = try EnginePlanner(manifest: manifest).decode(5, position: 3)
    XCTAssertEqual(step.calls.map(\.package), manifest.packages.map(\.file))
    XCTAssertEqual(step.calls[1].inputs.first?.source, .hidden(fromPackage: manifest.packages[0].file))
  }

  func testContextOverflowIsRefused() throws {
    let manifest = try Manifest(json: try loadVector("engine_plan_pte.json")["manifest"])
    let session = GenerationSession(engine: try ReplayEngine(manifest: manifest))
    XCTAssertThrowsError(try session.prefill(Array(repeating: 1, count: manifest.maxSeqLen + 1))) {
      XCTAssertTrue("\($0)".contains("does not fit"), "\($0)")
    }
    XCTAssertThrowsError(try session.prefill([manifest.vocabSize])) {
      XCTAssertTrue("\($0)".contains("outside the bundle's vocabulary"), "\($0)")
    }
    XCTAssertEqual(session.position, 0, "a refused prompt leaves the state untouched")
  }
}
