import Foundation
import QwenMobileKit

/// One chat over one engine: ChatML turns (thinking on or off), streaming text, tok/s. The model state is kept
/// between turns, so each turn prefills only its own tokens (runtime/chat.py's rule).
public final class ChatController {
  /// Called after any published property changes; the SwiftUI layer turns it into view updates (Observation
  /// is not used: Debian's libswiftObservation does not link, and these classes must build on Linux).
  public var onChange: (() -> Void)?

  public struct Message: Identifiable, Equatable {
    public let id = UUID()
    public let role: String
    public var text: String
    public var stats: String?
  }

  public private(set) var messages: [Message] = [] { didSet { onChange?() } }
  public private(set) var isGenerating = false { didSet { onChange?() } }
  public var thinking: Bool { didSet { onChange?() } }
  public var systemPrompt: String { didSet { onChange?() } }
  public var sampling: SamplingConfig { didSet { onChange?() } }
  public var maxNewTokens: Int { didSet { onChange?() } }
  public private(set) var lastError: String? { didSet { onChange?() } }

  let session: GenerationSession
  let tokenizer: BPETokenizer
  let template = ChatTemplate()
  let imEnd: Int?
  var lastTurnEndedWithImEnd: Bool?
  var stopRequested = false

  public init(
    engine: InferenceEngine, tokenizer: BPETokenizer, thinking: Bool, systemPrompt: String = "",
    sampling: SamplingConfig = .greedy, maxNewTokens: Int = 512
  ) {
    session = GenerationSession(engine: engine)
    self.tokenizer = tokenizer
    self.thinking = thinking
    self.systemPrompt = systemPrompt
    self.sampling = sampling
    self.maxNewTokens = maxNewTokens
    imEnd = tokenizer.id(of: ChatTemplate.imEnd)
  }

  public func reset() {
    session.reset()
    messages = []
    lastTurnEndedWithImEnd = nil
    lastError = nil
  }

  public func stop() { stopRequested = true }

  /// The text this turn feeds: the close of the previous assistant turn, the system prompt on the first turn, the
  /// user turn and the generation prompt.
  func promptText(for user: String) -> String {
    var text = ""
    if let ended = lastTurnEndedWithImEnd {
      text += ChatTemplate.closeAssistant(endedWithImEnd: ended)
    } else if !systemPrompt.isEmpty {
      text += template.system(systemPrompt)
    }
    return text + template.user(user, thinking: thinking)
  }

  /// Runs one turn; `publish` is called with each streamed piece (on the caller's thread: the UI hops to main).
  public func send(_ user: String, publish: ((String) -> Void)? = nil) throws {
    guard !isGenerating else { throw BundleError("a reply is still being generated") }
    isGenerating = true
    stopRequested = false
    defer { isGenerating = false }
    messages.append(Message(role: "user", text: user))
    messages.append(Message(role: "assistant", text: ""))
    let ids = try tokenizer.encode(promptText(for: user))
    var decoder = StreamingDecoder()
    var sampler = Sampler(sampling)
    let stops = Set(session.manifest.stopIDs)
    do {
      let result = try session.generate(ids, maxNewTokens: maxNewTokens, sampler: &sampler, stopIDs: stops) { token in
        if !stops.contains(token) {
          let piece = decoder.append(self.tokenizer.tokenBytes(token))
          self.messages[self.messages.count - 1].text += piece
          publish?(piece)
        }
        return !self.stopRequested
      }
      messages[messages.count - 1].text += decoder.flush()
      lastTurnEndedWithImEnd = result.ids.last == imEnd
      let sample = result.sample
      messages[messages.count - 1].stats = String(
        format: "%d tokens · prefill %.1f tok/s · decode %@ tok/s · TTFT %.0f ms", result.ids.count,
        sample.prefillTokS, sample.decodeTokS.map { String(format: "%.1f", $0) } ?? "-", sample.ttftMs)
      lastError = nil
    } catch {
      lastError = "\(error)"
      throw error
    }
  }
}
