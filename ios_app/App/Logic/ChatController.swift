import Foundation
import QwenMobileKit

/// One chat over one engine: ChatML turns (thinking on or off), streaming text, tok/s. The model state is kept
/// between turns, so each turn prefills only its own tokens (runtime/chat.py's rule). For a bundle with a `vision`
/// section on an engine that runs image methods, one attached image goes with the next turn.
public final class ChatController {
  /// Called after any published property changes; the SwiftUI layer turns it into view updates (Observation
  /// is not used: Debian's libswiftObservation does not link, and these classes must build on Linux).
  public var onChange: (() -> Void)?

  public struct Message: Identifiable, Equatable {
    public let id = UUID()
    public let role: String
    public var text: String
    public var stats: String?
    /// The user turn's image, e.g. "[image 336x448]"; nil for a turn without one.
    public var image: String?
  }

  public private(set) var messages: [Message] = [] { didSet { onChange?() } }
  public private(set) var isGenerating = false { didSet { onChange?() } }
  public var thinking: Bool { didSet { onChange?() } }
  public var systemPrompt: String { didSet { onChange?() } }
  public var sampling: SamplingConfig { didSet { onChange?() } }
  public var maxNewTokens: Int { didSet { onChange?() } }
  public private(set) var lastError: String? { didSet { onChange?() } }
  /// The image the next turn carries; sending consumes it (one image per turn).
  public private(set) var attachment: ImageAttachment? { didSet { onChange?() } }
  /// nil when this bundle and engine take images; otherwise why the image button is disabled.
  public let imagesUnavailableReason: String?

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
    imagesUnavailableReason = ImageSupport.unavailableReason(manifest: session.manifest, engine: engine)
  }

  /// The bundle's vision section when images can be attached.
  public var vision: VisionSpec? { imagesUnavailableReason == nil ? session.manifest.vision : nil }

  /// The line beside the image button: why there are no images, what is attached, or that nothing is.
  public var imageLine: String { imagesUnavailableReason ?? attachment?.statusLine ?? "no image attached" }

  public func attach(_ image: ImageAttachment) throws {
    if let why = imagesUnavailableReason { throw BundleError(why) }
    attachment = image
  }

  public func clearAttachment() { attachment = nil }

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
    promptHead() + template.user(user, thinking: thinking)
  }

  /// What comes before this turn's user turn: the close of the previous reply, or the system prompt on the first.
  func promptHead() -> String {
    if let ended = lastTurnEndedWithImEnd { return ChatTemplate.closeAssistant(endedWithImEnd: ended) }
    return systemPrompt.isEmpty ? "" : template.system(systemPrompt)
  }

  /// The ids this turn feeds. With an image the user turn starts with vision_start, ONE image token and vision_end
  /// (Qwen's chat template puts the image before the question; the session expands the token), the ids taken from
  /// the manifest and the text around them encoded apart (special tokens encode the same apart as together).
  func promptIDs(for user: String, image: Bool) throws -> [Int] {
    guard image else { return try tokenizer.encode(promptText(for: user)) }
    guard let vision = session.manifest.vision else {
      throw BundleError("image: this bundle has no vision section; it takes no images")
    }
    let after = user + "\(ChatTemplate.imEnd)\n" + template.generationPrompt(thinking: thinking)
    return try tokenizer.encode(promptHead() + "\(ChatTemplate.imStart)user\n")
      + [vision.visionStartTokenID, vision.imageTokenID, vision.visionEndTokenID] + tokenizer.encode(after)
  }

  /// Runs one turn; `publish` is called with each streamed piece (on the caller's thread: the UI hops to main).
  public func send(_ user: String, publish: ((String) -> Void)? = nil) throws {
    guard !isGenerating else { throw BundleError("a reply is still being generated") }
    isGenerating = true
    stopRequested = false
    defer { isGenerating = false }
    let attached = attachment
    attachment = nil  // consumed by this turn, whatever its outcome
    messages.append(Message(role: "user", text: user, image: attached?.transcriptMark))
    messages.append(Message(role: "assistant", text: ""))
    let ids: [Int]
    do {
      ids = try promptIDs(for: user, image: attached != nil)
    } catch {
      lastError = "\(error)"
      throw error
    }
    var decoder = StreamingDecoder()
    var sampler = Sampler(sampling)
    let stops = Set(session.manifest.stopIDs)
    do {
      let result = try session.generate(
        ids, maxNewTokens: maxNewTokens, sampler: &sampler, stopIDs: stops, image: attached?.image
      ) { token in
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
      let encode = result.imageEncodeMs.map {
        String(format: " (image encode %.0f ms, %d tokens)", $0, result.imageTokens)
      }
      messages[messages.count - 1].stats = String(
        format: "%d tokens · prefill %.1f tok/s · decode %@ tok/s · TTFT %.0f ms%@", result.ids.count,
        sample.prefillTokS, sample.decodeTokS.map { String(format: "%.1f", $0) } ?? "-", sample.ttftMs, encode ?? "")
      lastError = nil
    } catch {
      lastError = "\(error)"
      throw error
    }
  }
}
