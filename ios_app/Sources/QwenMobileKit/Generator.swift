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
  }

  func checkFits(_ n: Int) throws {
    if n > remaining {
      throw BundleError(
        "prompt of \(n) tokens does not fit: position \(position) + \(n) > the bundle's context of "
          + "\(manifest.maxSeqLen) tokens (\(remaining) left); start a new chat or shorten the prompt")
    }
  }

  public func prefill(_ ids: [Int]) throws -> [Float] {
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

  public func step(_ token: Int) throws -> [Float] {
    try checkFits(1)
    let logits = try engine.execute(try engine.planner.decode(token, position: position))
    tokens.append(token)
    return logits
  }

  /// Prefill `promptIDs` after the current state, then sample up to `maxNewTokens` (runtime/session.py generate):
  /// stops on a stop id (kept, left pending), at the limit, or when the context is full. `onToken` streams; return
  /// false from it to stop early.
  public func generate(
    _ promptIDs: [Int], maxNewTokens: Int, sampler: inout Sampler, stopIDs: Set<Int>? = nil,
    onToken: ((Int) -> Bool)? = nil
  ) throws -> GenerationResult {
    let stops = stopIDs ?? Set(manifest.stopIDs)
    var result = GenerationResult(promptIDs: promptIDs)
    let t0 = now()
    var logits = try prefill(promptIDs)
    result.prefillMs = ms(since: t0)
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
