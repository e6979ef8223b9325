import Dispatch
import Foundation

/// What the app runs a bundle through: Core ML or ExecuTorch (QwenMobileEngines), or a test double. One step in,
/// the logits [vocab] of its last token out; the engine keeps the model state between steps.
public protocol InferenceEngine: AnyObject {
  var planner: EnginePlanner { get }
  /// A short description for results and the UI, e.g. "Core ML (cpuAndNeuralEngine)".
  var runtimeDescription: String { get }
  func execute(_ step: PlannedStep) throws -> [Float]
}

/// An engine that also runs a bundle's image methods (runtime/CONTRACT.md, "Images"); the session drives the steps
/// (chunks, the splice, positions), the engine makes one program call per method.
public protocol ImageInferenceEngine: InferenceEngine {
  /// `encode_image_<H>x<W>`: rgb [H, W, 3] at `size` -> [size.tokens * hidden].
  func encodeImage(_ rgb: [UInt8], size: ImageSizeSpec) throws -> [Float]
  /// `embed_tokens` over at most the method's max_tokens ids -> [ids.count * hidden].
  func embed(_ ids: [Int]) throws -> [Float]
  /// `prefill_embeddings`: embeds [n * hidden] at cache slots start..<start+n, rope [3, n] -> logits [vocab] of the last.
  func prefillEmbeddings(_ embeds: [Float], start: Int, rope: [Int]) throws -> [Float]
  /// `decode_token_rope`: one token at cache slot `slot` and rotary position `rope` -> logits [vocab].
  func decodeRope(_ token: Int, slot: Int, rope: Int) throws -> [Float]
}

public struct GenerationResult: Equatable {
  public enum StopReason: String, Equatable {
    case maxNewTokens = "max_new_tokens"
    case stopToken = "stop_token"
    case contextFull = "context_full"
  }
  public var promptIDs: [Int]
  public var ids: [Int] = []
  public var stopReason: StopReason = .maxNewTokens
  public var ttftMs: Double = 0
  public var prefillMs: Double = 0
  public var stepMs: [Double] = []
  /// With an image: its encode (included in ttftMs and prefillMs) and the tokens it took in the prompt.
  public var imageEncodeMs: Double?
  public var imageTokens = 0

  public var sample: RunSample {
    RunSample(
      promptTokens: promptIDs.count, ttftMs: ttftMs, prefillMs: prefillMs, decodeStepMs: stepMs,
      generatedTokens: ids.count)
  }
}

/// A conversation's state in one engine, with runtime/session.py's bookkeeping: `tokens` is everything the model
/// state has consumed; the last sampled token of a turn is not fed yet (`pending`) and starts the next prompt, so a
/// chat that keeps its state is token-for-token one long generation.
public final class GenerationSession {
  public let engine: InferenceEngine
  public private(set) var tokens: [Int] = []
  public private(set) var pending: [Int] = []
  /// Rotary position minus cache slot for every token after an image (non-positive); 0 in a text-only session, which
  /// runs the planner's forward/decode_token steps.
  public private(set) var ropeDelta = 0
  public private(set) var lastImageEncodeMs: Double?
  private let now: () -> UInt64

  public init(engine: InferenceEngine, clock: @escaping () -> UInt64 = { DispatchTime.now().uptimeNanoseconds }) {
    self.engine = engine
    self.now = clock
  }

  public var manifest: Manifest { engine.planner.manifest }
  public var position: Int { tokens.count }
  public var remaining: Int { manifest.maxSeqLen - position }

  /// The next step starts at position 0, which zeroes every state inside the program.
  public func reset() {
    tokens = []
    pending = []
    ropeDelta = 0
  }

  func checkFits(_ n: Int) throws {
    if n > remaining {
      throw BundleError(
        "prompt of \(n) tokens does not fit: position \(position) + \(n) > the bundle's context of "
          + "\(manifest.maxSeqLen) tokens (\(remaining) left); start a new chat or shorten the prompt")
    }
  }

  public func prefill(_ ids: [Int], image: ImageRGB? = nil) throws -> [Float] {
    lastImageEncodeMs = nil
    if image != nil || ropeDelta != 0 { return try prefillWithRope(ids, image: image) }
    let all = pending + ids
    guard !all.isEmpty else { throw BundleError("prefill needs at least one token") }
    try checkFits(all.count)
    for t in all where t < 0 || t >= manifest.vocabSize {
      throw BundleError("token id \(t) is outside the bundle's vocabulary (0..\(manifest.vocabSize - 1))")
    }
    var logits: [Float] = []
    for step in try engine.planner.prefill(all, start: position) { logits = try engine.execute(step) }
    tokens += all
    pending = []
    return logits
  }

  /// CONTRACT.md "Images", steps 1-4, as qwen-bench does them: the image's one token expanded, the image encoded,
  /// the prompt embedded in chunks with the image's rows written over its tokens', prefill_embeddings in chunks.
  func prefillWithRope(_ ids: [Int], image: ImageRGB?) throws -> [Float] {
    guard let vision = manifest.vision, let hidden = manifest.hiddenSize else {
      throw BundleError("\(manifest.source): no vision section: this bundle takes no images")
    }
    guard let engine = engine as? ImageInferenceEngine else {
      throw BundleError("\(engine.runtimeDescription) does not run image methods")
    }
    let all = pending + ids
    guard !all.isEmpty else { throw BundleError("prefill needs at least one token") }
    for t in all where t < 0 || t >= manifest.vocabSize {
      throw BundleError("token id \(t) is outside the bundle's vocabulary (0..\(manifest.vocabSize - 1))")
    }
    let size = try image.map { try vision.size(height: $0.height, width: $0.width) }
    let layout = try ImagePromptLayout(
      ids: all, firstSearched: pending.count, image: size, ropeStart: position + ropeDelta, vision: vision)
    try checkFits(layout.tokens.count)
    var imageRows: [Float] = []
    if let image, let size {
      let t0 = now()
      imageRows = try engine.encodeImage(image.rgb, size: size)
      lastImageEncodeMs = ms(since: t0)
      guard imageRows.count == size.tokens * hidden else {
        throw BundleError("\(size.method): \(imageRows.count) values, expected \(size.tokens) x \(hidden)")
      }
    }
    let chunk = min(
      manifest.methods[VisionSpec.embedMethod]?.maxTokens ?? manifest.maxPrefillTokens,
      manifest.methods[VisionSpec.prefillMethod]?.maxTokens ?? manifest.maxPrefillTokens)
    let n = layout.tokens.count
    var embeds: [Float] = []
    embeds.reserveCapacity(n * hidden)
    for begin in stride(from: 0, to: n, by: chunk) {
      embeds += try engine.embed(Array(layout.tokens[begin..<min(n, begin + chunk)]))
    }
    guard embeds.count == n * hidden else {
      throw BundleError("\(VisionSpec.embedMethod): \(embeds.count) values for \(n) tokens of \(hidden)")
    }
    if !layout.imageRange.isEmpty {
      embeds.replaceSubrange(
        layout.imageRange.lowerBound * hidden..<layout.imageRange.upperBound * hidden, with: imageRows)
    }
    var logits: [Float] = []
    for begin in stride(from: 0, to: n, by: chunk) {
      let end = min(n, begin + chunk)
      // layout.rope [3, n] -> its columns begin..<end as [3, end - begin]
      let rope = (0..<3).flatMap { row in layout.rope[(row * n + begin)..<(row * n + end)] }
      logits = try engine.prefillEmbeddings(
        Array(embeds[(begin * hidden)..<(end * hidden)]), start: position + begin, rope: rope)
    }
    tokens += layout.tokens
    pending = []
    ropeDelta = layout.nextRope - position
    return logits
  }

  public func step(_ token: Int) throws -> [Float] {
    try checkFits(1)
    if ropeDelta != 0 {
      guard let engine = engine as? ImageInferenceEngine else {
        throw BundleError("\(engine.runtimeDescription) does not run image methods")
      }
      let logits = try engine.decodeRope(token, slot: position, rope: position + ropeDelta)
      tokens.append(token)
      return logits
    }
    let logits = try engine.execute(try engine.planner.decode(token, position: position))
    tokens.append(token)
    return logits
  }

  /// Prefill `promptIDs` after the current state, then sample up to `maxNewTokens` (runtime/session.py generate):
  /// stops on a stop id (kept, left pending), at the limit, or when the context is full. `onToken` streams; return
  /// false from it to stop early.
  /// With `image` (at one of the bundle's sizes), `promptIDs` holds one image token for it.
  public func generate(
    _ promptIDs: [Int], maxNewTokens: Int, sampler: inout Sampler, stopIDs: Set<Int>? = nil, image: ImageRGB? = nil,
    onToken: ((Int) -> Bool)? = nil
  ) throws -> GenerationResult {
    let stops = stopIDs ?? Set(manifest.stopIDs)
    var result = GenerationResult(promptIDs: promptIDs)
    let t0 = now()
    let before = position + pending.count
    var logits = try prefill(promptIDs, image: image)
    result.prefillMs = ms(since: t0)
    if image != nil {
      result.imageEncodeMs = lastImageEncodeMs
      result.imageTokens = position - before - promptIDs.count + 1
    }
    for i in 0..<maxNewTokens {
      let token = sampler.sample(logits, context: tokens)
      if i == 0 { result.ttftMs = ms(since: t0) }
      result.ids.append(token)
      if let onToken, !onToken(token) { break }
      if stops.contains(token) {
        result.stopReason = .stopToken
        break
      }
      if i == maxNewTokens - 1 { break }
      if remaining < 1 {
        result.stopReason = .contextFull
        break
      }
      let t1 = now()
      logits = try step(token)
      result.stepMs.append(ms(since: t1))
    }
    if result.ids.isEmpty { result.ttftMs = result.prefillMs }
    if let last = result.ids.last { pending = [last] }
    return result
  }

  private func ms(since start: UInt64) -> Double { Double(now() &- start) / 1e6 }
}
