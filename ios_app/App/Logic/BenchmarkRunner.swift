import Foundation
import QwenMobileKit

/// The benchmark the app's Benchmark screen and the device-farm XCTests run: per prompt length, warm-ups (dropped),
/// then measured runs, each started only once the device is back to the nominal thermal state; battery, low power
/// mode, a thermal timeline and process CPU time recorded around the whole run; the result in the bench schema.
public final class BenchmarkRunner {
  public struct Options {
    public var settings: BenchSettings
    public var seed: UInt64
    /// Longest wait for `nominal` before a run; a run that starts hotter is noted in the result, not hidden.
    public var coolDownTimeout: Double
    public var pollSeconds: Double

    public init(settings: BenchSettings, seed: UInt64 = 0, coolDownTimeout: Double = 300, pollSeconds: Double = 5) {
      self.settings = settings
      self.seed = seed
      self.coolDownTimeout = coolDownTimeout
      self.pollSeconds = pollSeconds
    }
  }

  public enum Event: Equatable {
    case coolingDown(thermal: String)
    case run(promptTokens: Int, index: Int, of: Int, warmup: Bool)
    case finished
  }

  let engine: InferenceEngine
  let probe: DeviceProbe
  public var onEvent: ((Event) -> Void)?
  public var isCancelled: () -> Bool = { false }

  public init(engine: InferenceEngine, probe: DeviceProbe) {
    self.engine = engine
    self.probe = probe
  }

  /// Prompt ids drawn by SplitMix64 (seed + length), never a stop id, so every runtime can rebuild the same prompt.
  public static func prompt(length: Int, vocab: Int, seed: UInt64, avoid: Set<Int>) -> [Int] {
    var rng = SplitMix64(seed: seed &+ UInt64(length))
    var ids: [Int] = []
    while ids.count < length {
      let id = Int(rng.next() % UInt64(vocab))
      if !avoid.contains(id) { ids.append(id) }
    }
    return ids
  }

  public func run(_ options: Options, bundlePath: String?, appVersion: String, loadMs: Double?) throws -> BenchReport {
    let manifest = engine.planner.manifest
    let settings = options.settings
    for length in settings.promptLengths where length + settings.generateTokens > manifest.maxSeqLen {
      throw BundleError(
        "prompt length \(length) + \(settings.generateTokens) generated tokens does not fit the bundle's context "
          + "of \(manifest.maxSeqLen)")
    }
    let start = probe.snapshot()
    let t0 = probe.now()
    let cpu0 = probe.cpuSeconds()
    var thermal = [ThermalReading(seconds: 0, zone: "ProcessInfo.thermalState", value: start.thermal)]
    var notes: [String] = ["ios-app run; timings are this device's, with the thermal state noted per run"]
    var samples: [Int: [RunSample]] = [:]
    var generated = 0
    for length in settings.promptLengths {
      let prompt = BenchmarkRunner.prompt(
        length: length, vocab: manifest.vocabSize, seed: options.seed, avoid: Set(manifest.stopIDs))
      let total = settings.warmup + settings.runs
      for i in 0..<total {
        if isCancelled() { throw BundleError("benchmark cancelled") }
        let warmup = i < settings.warmup
        if !warmup {
          let reached = coolDown(options, timeline: &thermal, t0: t0)
          if !reached {
            notes.append(
              "prompt \(length) run \(i - settings.warmup): started at thermal state "
                + "'\(probe.snapshot().thermal)' after waiting \(Int(options.coolDownTimeout)) s")
          }
        }
        onEvent?(.run(promptTokens: length, index: i, of: total, warmup: warmup))
        let session = GenerationSession(engine: engine)
        var sampler = Sampler(.greedy)
        // Stop ids are ignored: every run generates the same number of tokens.
        let result = try session.generate(prompt, maxNewTokens: settings.generateTokens, sampler: &sampler, stopIDs: [])
        thermal.append(
          ThermalReading(
            seconds: probe.now() - t0, zone: "ProcessInfo.thermalState",
            value: probe.snapshot().thermal))
        if !warmup {
          samples[length, default: []].append(result.sample)
          generated += result.ids.count
        }
      }
    }
    let end = probe.snapshot()
    let images = try imageRows(options)
    let energy = EnergyObservation(
      batteryStartPct: start.batteryPct, batteryEndPct: end.batteryPct, batteryState: end.batteryState,
      lowPowerMode: start.lowPowerMode || end.lowPowerMode, cpuSeconds: probe.cpuSeconds() - cpu0,
      wallSeconds: probe.now() - t0, thermal: thermal, sampleHz: 1 / max(options.pollSeconds, 0.001))
    if start.lowPowerMode || end.lowPowerMode { notes.append("Low Power Mode was on: the CPU is throttled") }
    if start.batteryState == "charging" || start.batteryState == "full" {
      notes.append("device on power (\(start.batteryState)): the battery change says nothing about energy")
    }
    notes.append(
      String(
        format: "process CPU time %.3f s for %d generated tokens (energy proxy)",
        energy.cpuSeconds ?? 0, generated))
    onEvent?(.finished)
    var report = BenchReport(
      manifest: manifest, bundlePath: bundlePath, device: probe.deviceInfo(), settings: settings,
      runtime: engine.runtimeDescription, appVersion: appVersion, samples: samples,
      peakMemoryBytes: probe.peakMemoryBytes(), loadMs: loadMs, energy: energy, notes: notes)
    report.images = images
    return report
  }

  /// Text tokens after the image in the image rows (runtime/bench.py IMAGE_PROMPT_TEXT_TOKENS).
  static let imagePromptTextTokens = 16

  /// The bench schema's `images` rows, as runtime/bench.py measures them: per image size of a bundle with a vision
  /// section, the test card before 16 random text tokens, one greedy token; the encode and the whole prompt's time
  /// to first token. Empty for a text bundle or an engine without image methods.
  func imageRows(_ options: Options) throws -> [ImageBenchRow] {
    let manifest = engine.planner.manifest
    guard let vision = manifest.vision, engine is ImageInferenceEngine else { return [] }
    let avoid = Set(manifest.stopIDs + [vision.imageTokenID, vision.visionStartTokenID, vision.visionEndTokenID])
    let text = BenchmarkRunner.prompt(
      length: BenchmarkRunner.imagePromptTextTokens, vocab: manifest.vocabSize, seed: options.seed, avoid: avoid)
    let prompt = [vision.visionStartTokenID, vision.imageTokenID, vision.visionEndTokenID] + text
    var rows: [ImageBenchRow] = []
    for size in vision.images {
      let card = ImageRGB.testCard(height: size.height, width: size.width)
      var row = ImageBenchRow(size: size, promptTokens: prompt.count - 1 + size.tokens)
      for i in 0..<(options.settings.warmup + options.settings.runs) {
        if isCancelled() { throw BundleError("benchmark cancelled") }
        let session = GenerationSession(engine: engine)
        var sampler = Sampler(.greedy)
        let result = try session.generate(prompt, maxNewTokens: 1, sampler: &sampler, stopIDs: [], image: card)
        guard i >= options.settings.warmup else { continue }
        row.encodeMs.append(result.imageEncodeMs ?? 0)
        row.ttftMs.append(result.ttftMs)
      }
      rows.append(row)
    }
    return rows
  }

  /// Waits (polling) until the thermal state is nominal; false if the timeout passed first.
  func coolDown(_ options: Options, timeline: inout [ThermalReading], t0: Double) -> Bool {
    let deadline = probe.now() + options.coolDownTimeout
    while true {
      let state = probe.snapshot().thermal
      if state == "nominal" { return true }
      timeline.append(ThermalReading(seconds: probe.now() - t0, zone: "ProcessInfo.thermalState", value: state))
      if probe.now() >= deadline || isCancelled() { return false }
      onEvent?(.coolingDown(thermal: state))
      probe.sleep(seconds: options.pollSeconds)
    }
  }
}
