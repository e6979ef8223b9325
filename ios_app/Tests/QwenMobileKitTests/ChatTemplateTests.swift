import Foundation
import XCTest

@testable import QwenMobileKit

/// Text from runtime/chat.py and ids from `tokenizers` for each conversation (tests/apps/vectors/chat_template.json).
final class ChatTemplateTests: XCTestCase {
  func testSharedCases() throws {
    let nano = try BPETokenizer(url: repoRoot.appendingPathComponent("models/nano/tokenizer.json"))
    let cases = try loadVector("chat_template.json")["cases"].array()
    XCTAssertGreaterThan(cases.count, 3)
    for c in cases {
      let messages = try c["messages"].array().map {
        ChatMessage(role: try $0["role"].string(), content: try $0["content"].string())
      }
      let text = ChatTemplate().render(
        messages, addGenerationPrompt: try c["add_generation_prompt"].bool(),
        thinking: try c["enable_thinking"].bool())
      XCTAssertEqual(text, try c["text"].string())
      XCTAssertEqual(try nano.encode(text), try c["ids_nano"].ints(), text)
    }
  }

  func testTurnByTurnEqualsWholeConversation() {
    let t = ChatTemplate(thinking: true)
    let whole = t.render(
      [ChatMessage(role: "system", content: "S"), ChatMessage(role: "user", content: "U")], addGenerationPrompt: true)
    XCTAssertEqual(t.system("S") + t.user("U"), whole)
    XCTAssertTrue(whole.hasSuffix("<|im_start|>assistant\n<think>\n"))
    XCTAssertTrue(t.user("U", thinking: false).hasSuffix("<think>\n\n</think>\n\n"))
  }
}
