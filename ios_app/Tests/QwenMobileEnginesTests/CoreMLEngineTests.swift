import CoreML
import Foundation
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
