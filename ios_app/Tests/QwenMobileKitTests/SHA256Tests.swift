import Foundation
import XCTest

@testable import QwenMobileKit

final class SHA256Tests: XCTestCase {
  /// FIPS 180-4 / NIST CSRC example vectors.
  func testNISTVectors() {
    XCTAssertEqual(SHA256.hex(Array("".utf8)), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    XCTAssertEqual(SHA256.hex(Array("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    XCTAssertEqual(
      SHA256.hex(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)),
      "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    XCTAssertEqual(
      SHA256.hex([UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000)),
      "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
  }

  /// Any split of the input into update() calls gives the one-shot digest (block boundaries at 55, 56, 64 bytes).
  func testIncrementalUpdatesAcrossBlockBoundaries() {
    let message = (0..<300).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
    for length in [0, 1, 55, 56, 63, 64, 65, 119, 128, 300] {
      let whole = SHA256.hex(message.prefix(length))
      for cut in [0, 1, 17, 63, 64, length / 2, length] where cut <= length {
        var h = SHA256()
        h.update(message[0..<cut])
        h.update(Data(message[cut..<length]))
        XCTAssertEqual(SHA256.hexString(h.finalize()), whole, "length \(length) cut \(cut)")
      }
    }
  }

  /// The file hash of models/nano/tokenizer.json against the sha256 Python's exporter wrote into a real manifest.
  func testFileHashMatchesPythonManifest() throws {
    let vector = try loadVector("engine_plan_pte.json")
    let entry = vector["manifest"]["files"]["tokenizer.json"]
    let url = repoRoot.appendingPathComponent("models/nano/tokenizer.json")
    let (digest, bytes) = try SHA256.hexFile(at: url, chunkSize: 4096)
    XCTAssertEqual(digest, try entry["sha256"].string())
    XCTAssertEqual(Int(bytes), try entry["bytes"].int())
  }
}
