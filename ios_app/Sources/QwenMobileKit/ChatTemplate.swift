import Foundation

/// Qwen3.5's ChatML, as runtime/chat.py renders it: turns `<|im_start|>{role}\n{content}<|im_end|>\n`, and the
/// generation prompt `<|im_start|>assistant\n` followed by `<think>\n` (thinking on) or the empty block
/// `<think>\n\n</think>\n\n` (thinking off).
public struct ChatMessage: Equatable {
  public let role: String
  public let content: String
  public init(role: String, content: String) {
    self.role = role
    self.content = content
  }
}

public struct ChatTemplate {
  public static let imStart = "<|im_start|>"
  public static let imEnd = "<|im_end|>"
  public static let think = "<think>"
  public static let endThink = "</think>"

  public var thinking: Bool
  public init(thinking: Bool = false) { self.thinking = thinking }

  public func turn(role: String, _ content: String) -> String {
    "\(Self.imStart)\(role)\n\(content)\(Self.imEnd)\n"
  }

  public func system(_ text: String) -> String { turn(role: "system", text) }

  /// A user turn followed by the assistant's generation prompt: what a chat session prefills for a new turn.
  public func user(_ text: String, thinking: Bool? = nil) -> String {
    turn(role: "user", text) + generationPrompt(thinking: thinking)
  }

  public func generationPrompt(thinking: Bool? = nil) -> String {
    let on = thinking ?? self.thinking
    return "\(Self.imStart)assistant\n" + (on ? "\(Self.think)\n" : "\(Self.think)\n\n\(Self.endThink)\n\n")
  }

  /// What ends an assistant turn before the next user turn (the model's own <|im_end|> is already in the state).
  public static func closeAssistant(endedWithImEnd: Bool) -> String { endedWithImEnd ? "\n" : "\(imEnd)\n" }

  /// A whole conversation as a session that keeps its state has fed it: system and user turns as written, each
  /// assistant turn as the generation prompt it was given, the reply, its <|im_end|> and the closing newline; then
  /// the generation prompt when asked.
  public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool, thinking: Bool? = nil) -> String {
    var text = messages.map {
      $0.role == "assistant"
        ? generationPrompt(thinking: thinking) + $0.content + Self.imEnd + Self.closeAssistant(endedWithImEnd: true)
        : turn(role: $0.role, $0.content)
    }.joined()
    if addGenerationPrompt { text += generationPrompt(thinking: thinking) }
    return text
  }

  /// Thinking default by model size, as runtime/chat.py's table (used when the manifest and template are silent).
  public static func thinkingDefault(size: String?, manifest: Bool?) -> Bool {
    if let m = manifest { return m }
    return ["0_8b": false, "2b": false, "4b": false, "9b": true][size ?? ""] ?? false
  }
}
