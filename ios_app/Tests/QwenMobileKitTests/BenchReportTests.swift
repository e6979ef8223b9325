import Foundation
import XCTest

@testable import QwenMobileKit

final class BenchReportTests: XCTestCase {
  func report() throws -> BenchReport {
    let manifest = try Manifest(json: try loadVector("engine_plan_pte.json")["manifest"])
    let settings = try BenchSettings(
      promptLengths: [4, 8], generateTokens: 4, runs: 2, warmup: 1,
      promptSource: "random ids, seed 0")
    let samples = [
      4: [
        RunSample(promptTokens: 4, ttftMs: 12, prefillMs: 10, decodeStepMs: [10, 10, 20], generatedTokens: 4),
        RunSample(promptTokens: 4, ttftMs: 14, prefillMs: 8, decodeStepMs: [5, 5, 5], generatedTokens: 4),
      ],
      8: [RunSample(promptTokens: 8, ttftMs: 20, prefillMs: 16, decodeStepMs: [], generatedTokens: 1)],
    ]
    let energy = EnergyObservation(
      batteryStartPct: 91, batteryEndPct: 90, batteryState: "unplugged", lowPowerMode: false, cpuSeconds: 1.5,
      wallSeconds: 2, thermal: [ThermalReading(seconds: 0, zone: "ProcessInfo.thermalState", value: "nominal")])
    var report = BenchReport(
      manifest: manifest, bundlePath: nil, device: DeviceInfo(model: "iPhone16,1", os: "iOS 18.1", arch: "arm64"),
      settings: settings, runtime: "ExecuTorch", appVersion: "0.1.0", samples: samples, energy: energy)
    // An image row, so check.sh's schema validation covers the `images` rows too.
    var row = ImageBenchRow(
      size: ImageSizeSpec(method: "encode_image_224x448", height: 224, width: 448, gridTHW: [1, 14, 28], tokens: 98),
      promptTokens: 2 + 98 + 16)
    row.encodeMs = [40, 44]
    row.ttftMs = [90, 100]
    report.images = [row]
    return report
  }

  func testImageRows() throws {
    let rows = try report().json()["images"] as! [[String: Any]]
    XCTAssertEqual(rows.count, 1)
    XCTAssertEqual(rows[0]["prompt_tokens"] as? Int, 116)
    XCTAssertEqual(rows[0]["method"] as? String, "encode_image_224x448")
    XCTAssertEqual((rows[0]["encode_ms"] as! [String: Any])["median"] as! Double, 42, accuracy: 1e-12)
    XCTAssertEqual((rows[0]["ttft_ms"] as! [String: Any])["mean"] as! Double, 95, accuracy: 1e-12)
    var text = try report()
    text.images = []
    XCTAssertNil(try text.json()["images"], "a text bundle's report has no images key")
  }

  func testNumbersAndShape() throws {
    let doc = try report().json()
    let results = doc["results"] as! [[String: Any]]
    XCTAssertEqual(results.count, 2)
    let first = results[0]
    let decode = first["decode_tok_s"] as! [String: Any]
    // 3 steps in 40 ms = 75 tok/s, 3 in 15 ms = 200 tok/s; median of two = 137.5
    XCTAssertEqual(decode["median"] as! Double, 137.5, accuracy: 1e-9)
    let prefill = first["prefill_tok_s"] as! [String: Any]
    XCTAssertEqual(prefill["max"] as! Double, 500, accuracy: 1e-9)  // 4 tokens in 8 ms
    XCTAssertTrue(results[1]["decode_tok_s"] is NSNull, "nothing decoded: null, never zero")
    XCTAssertEqual((doc["producer"] as! [String: Any])["name"] as? String, "ios-app")
    let energy = doc["energy"] as! [String: Any]
    XCTAssertEqual(energy["battery_delta_pct"] as! Double, -1)
    XCTAssertTrue((energy["absent_fields"] as! [String]).contains("joules"))
  }

  /// check.sh validates this file against runtime/schemas/bench.schema.json with Python's jsonschema.
  func testWritesReportForSchemaValidation() throws {
    guard let out = ProcessInfo.processInfo.environment["QWEN_MOBILE_BENCH_OUT"], !out.isEmpty else { return }
    try JSONWriter.writeAtomically(try report().json(), to: URL(fileURLWithPath: out))
  }

  func testMissingRunsAreRefused() throws {
    var r = try report()
    r.samples[8] = []
    XCTAssertThrowsError(try r.json())
  }
}
