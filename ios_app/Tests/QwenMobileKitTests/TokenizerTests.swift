import Foundation
import XCTest

@testable import QwenMobileKit

/// Token ids and decoded text from Hugging Face `tokenizers` (tests/apps/make_vectors.py), for the shipped nano
/// tokenizer and a Qwen-like one trained with Qwen's pre-tokenizer.
final class TokenizerTests: XCTestCase {
  func check(_ vectorFile: String) throws {
    let vector = try loadVector(vectorFile)
    let tokenizer = try BPETokenizer(url: repoRoot.appendingPathComponent(try vector["tokenizer"].string()))
    let cases = try vector["cases"].array()
    XCTAssertGreaterThan(cases.count, 5)
    var failures = 0
    for c in cases {
      let text = try c["text"].string()
      let want = try c["ids"].ints()
      let got = try tokenizer.encode(text)
      if got != want {
        failures += 1
        XCTFail("\(vectorFile): encode(\(text.debugDescription)) = \(got), Python \(want)")
      }
      XCTAssertEqual(tokenizer.decode(want), try c["decoded"].string(), "\(vectorFile): decode of \(want)")
    }
    XCTAssertEqual(failures, 0)
  }

  func testNanoTokenizer() throws { try check("tokenizer_nano.json") }

  func testQwenLikeTokenizer() throws { try check("tokenizer_qwenlike.json") }

  /// The regex split alone (byte-level pieces), which whole-text ids can hide.
  func testPreTokenizerPieces() throws {
    let nano = try BPETokenizer(url: repoRoot.appendingPathComponent("models/nano/tokenizer.json"))
    let qwenlike = try BPETokenizer(url: vectorsDir.appendingPathComponent("qwenlike_tokenizer.json"))
    for c in try loadVector("pretokenize.json")["cases"].array() {
      let text = try c["text"].string().precomposedStringWithCanonicalMapping
      XCTAssertEqual(nano.preTokenize(text), try c["pieces_nano"].array().map { try $0.string() }, text)
      XCTAssertEqual(qwenlike.preTokenize(text), try c["pieces_qwenlike"].array().map { try $0.string() }, text)
    }
  }

  func testRustWhitespaceClassIsSpelledOutForICU() {
    XCTAssertEqual(
      BPETokenizer.icuPattern(fromRust: #"\s+(?!\S)"#), #"[\t\n\x{0B}\f\r\x{85}\p{Z}]+(?![^\t\n\x{0B}\f\r\x{85}\p{Z}])"#
    )
    XCTAssertEqual(BPETokenizer.icuPattern(fromRust: #"[^\s\p{L}]"#), #"[^\t\n\x{0B}\f\r\x{85}\p{Z}\p{L}]"#)
  }

  func testStreamingDecoderHoldsBackSplitCharacters() {
    var d = StreamingDecoder()
    let euro = Array("€".utf8)  // 3 bytes
    XCTAssertEqual(d.append([UInt8(ascii: "a"), euro[0]]), "a")
    XCTAssertEqual(d.append([euro[1]]), "")
    XCTAssertEqual(d.append([euro[2], UInt8(ascii: "b")]), "€b")
    XCTAssertEqual(d.flush(), "")
  }

  func testUnsupportedTokenizerIsRefusedByName() throws {
    let json = #"{"model": {"type": "Unigram", "vocab": []}}"#
    XCTAssertThrowsError(try BPETokenizer(json: try JSONNode.parse(Data(json.utf8), source: "t.json"))) {
      XCTAssertEqual(fieldOf($0), "model/type")
    }
  }
}
