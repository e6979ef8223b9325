import Foundation
import XCTest

@testable import QwenMobileKit

final class SamplingTests: XCTestCase {
  /// SplitMix64's published first outputs for seed 0 (as Java's SplittableRandom and runtime/sampling.py give them),
  /// the wrap-around at seed 2^64-1, and the 53-bit unit draw.
  func testSplitMix64() {
    var r = SplitMix64(seed: 0)
    XCTAssertEqual(
      [r.next(), r.next(), r.next()], [16_294_208_416_658_607_535, 7_960_286_522_194_355_700, 487_617_019_471_545_679])
    var w = SplitMix64(seed: UInt64.max)
    XCTAssertEqual([w.next(), w.next()], [16_490_336_266_968_443_936, 16_834_447_057_089_888_969])
    var u = SplitMix64(seed: 42)
    XCTAssertEqual(u.nextUnit(), 0.7415648787718233, accuracy: 0)
    XCTAssertEqual(u.nextUnit(), 0.1599103928769201, accuracy: 0)
  }

  /// Successive draws of one sampler from runtime/sampling.py on the same logits and context
  /// (tests/apps/vectors/sampling.json).
  func testSharedSamplingCases() throws {
    let cases = try loadVector("sampling.json")["cases"].array()
    XCTAssertGreaterThan(cases.count, 5)
    for c in cases {
      let name = c["name"].exists ? try c["name"].string() : c.path
      let cfg = c["config"]
      let config = try SamplingConfig(
        temperature: try cfg["temperature"].double(), topK: try cfg["top_k"].int(), topP: try cfg["top_p"].double(),
        repetitionPenalty: try cfg["repetition_penalty"].double(), seed: try seedOf(cfg["seed"]))
      let logits = try c["logits"].doubles().map { Float($0) }
      let context = try c["context"].ints()
      var sampler = Sampler(config)
      let got = try c["tokens"].ints().indices.map { _ in sampler.sample(logits, context: context) }
      XCTAssertEqual(got, try c["tokens"].ints(), name)
    }
  }

  /// Seeds up to 2^64-1 do not fit a Double: read them from the JSON number's text.
  func seedOf(_ node: JSONNode) throws -> UInt64 {
    if let n = node.value as? NSNumber, let v = UInt64(n.stringValue) { return v }
    if let s = node.value as? String, let v = UInt64(s) { return v }
    throw node.fail("expected a uint64 seed")
  }

  func testGreedyTakesLowestIndexAmongTies() {
    var s = Sampler(.greedy)
    XCTAssertEqual(s.sample([0, 3, 3, 1], context: []), 1)
  }

  func testRepetitionPenaltyAndFilters() throws {
    // Token 1 (2.0) penalised by 4 -> 0.5, below token 2 (1.0): greedy picks 2.
    var s = Sampler(try SamplingConfig(repetitionPenalty: 4))
    XCTAssertEqual(s.sample([0, 2, 1, -3], context: [1, 1]), 2)
    // top-k 1 leaves only the maximum whatever the draw.
    var k = Sampler(try SamplingConfig(temperature: 1, topK: 1, seed: 7))
    for _ in 0..<20 { XCTAssertEqual(k.sample([0.1, 0.3, 5, 0.2], context: []), 2) }
    XCTAssertThrowsError(try SamplingConfig(topP: 0))
  }
}
