import Foundation
import XCTest

@testable import QwenMobileKit

final class ManifestTests: XCTestCase {
  /// Python's jsonschema verdict on each shared case (tests/apps/vectors/manifest_cases.json): valid manifests read,
  /// invalid ones are refused naming the same field.
  func testSharedManifestCases() throws {
    let cases = try loadVector("manifest_cases.json")["cases"].array()
    XCTAssertGreaterThan(cases.count, 20)
    for c in cases {
      let name = try c["name"].string()
      let data = try JSONWriter.data(try c["manifest"].object())
      let node = try JSONNode.parse(data, source: "\(name).json")
      if try c["valid"].bool() {
        XCTAssertNoThrow(try Manifest(json: node), name)
      } else {
        let want = try c["field"].string()
        XCTAssertThrowsError(try Manifest(json: node), name) { error in
          XCTAssertEqual(fieldOf(error), want, "\(name): \(error)")
        }
      }
    }
  }

  /// The bundle identity of real exported manifests equals runtime/bundle.py's bundle_hash.
  func testBundleHashMatchesPython() throws {
    var checked = 0
    for file in ["engine_plan_pte.json", "engine_plan_coreml.json", "engine_plan_coreml_split.json"] {
      let vector = try loadVector(file)
      guard vector["bundle_hash"].exists else { continue }
      let manifest = try Manifest(json: vector["manifest"])
      XCTAssertEqual(manifest.bundleHash, try vector["bundle_hash"].string(), file)
      checked += 1
    }
    XCTAssertEqual(checked, 3, "every engine-plan vector carries Python's bundle_hash")
  }

  func testRealManifestFields() throws {
    let pte = try Manifest(json: try loadVector("engine_plan_pte.json")["manifest"])
    XCTAssertEqual(pte.recipeName, "xnnpack")
    XCTAssertEqual(pte.maxPrefillTokens, 8)
    XCTAssertEqual(pte.maxSeqLen, 64)
    XCTAssertEqual(pte.vocabSize, 8192)
    XCTAssertEqual(pte.forward.inputs.map(\.name), ["tokens", "input_pos"])
    XCTAssertEqual(pte.forward.inputs[0].shape, [.fixed(1), .symbol("T")])
    XCTAssertNil(pte.methods["state_read"], "snapshot methods are not engine methods")
    let split = try Manifest(json: try loadVector("engine_plan_coreml_split.json")["manifest"])
    XCTAssertEqual(split.packages.count, 3)
    XCTAssertEqual(split.forward.function, "prefill")
    XCTAssertEqual(split.packages[1].io["decode"]?.inputs.first?.name, "hidden")
  }
}

final class BundleFolderTests: XCTestCase {
  var folder: URL!

  override func setUpWithError() throws {
    folder = FileManager.default.temporaryDirectory.appendingPathComponent("qm-bundle-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    // A one-file bundle whose manifest entry (sha256 and size) was written by Python's exporter.
    let vector = try loadVector("engine_plan_pte.json")
    var manifest = try vector["manifest"].object()
    let files = try vector["manifest"]["files"].object()
    manifest["files"] = ["tokenizer.json": files["tokenizer.json"]!]
    try FileManager.default.copyItem(
      at: repoRoot.appendingPathComponent("models/nano/tokenizer.json"),
      to: folder.appendingPathComponent("tokenizer.json"))
    try JSONWriter.data(manifest).write(to: folder.appendingPathComponent("manifest.json"))
  }

  override func tearDownWithError() throws { try? FileManager.default.removeItem(at: folder) }

  func testIntactBundleVerifies() throws {
    let bundle = try BundleFolder(url: folder)
    XCTAssertEqual(bundle.manifest.files.count, 1)
  }

  func testModifiedFileIsRefused() throws {
    let url = folder.appendingPathComponent("tokenizer.json")
    var data = try Data(contentsOf: url)
    data[100] ^= 0x01
    try data.write(to: url)
    XCTAssertThrowsError(try BundleFolder(url: folder)) { error in
      XCTAssertTrue("\(error)".contains("sha256 does not match"), "\(error)")
    }
    XCTAssertNoThrow(try BundleFolder(url: folder, verifyHashes: false))
  }

  func testTruncatedAndMissingFilesAreRefused() throws {
    let url = folder.appendingPathComponent("tokenizer.json")
    let data = try Data(contentsOf: url)
    try data.prefix(1000).write(to: url)
    XCTAssertThrowsError(try BundleFolder(url: folder)) { XCTAssertTrue("\($0)".contains("incomplete copy"), "\($0)") }
    try FileManager.default.removeItem(at: url)
    XCTAssertThrowsError(try BundleFolder(url: folder)) { XCTAssertTrue("\($0)".contains("is missing"), "\($0)") }
  }

  func testNotABundle() {
    XCTAssertThrowsError(try BundleFolder(url: folder.appendingPathComponent("nope"))) {
      XCTAssertTrue("\($0)".contains("not a qwen-mobile bundle"), "\($0)")
    }
  }
}
