import Foundation

/// One generation's timings, the unit a benchmark aggregates (bench schema `$defs/sample`).
public struct RunSample: Equatable {
  public var promptTokens: Int
  public var ttftMs: Double
  public var prefillMs: Double
  public var decodeStepMs: [Double]
  public var generatedTokens: Int

  public init(promptTokens: Int, ttftMs: Double, prefillMs: Double, decodeStepMs: [Double], generatedTokens: Int) {
    self.promptTokens = promptTokens
    self.ttftMs = ttftMs
    self.prefillMs = prefillMs
    self.decodeStepMs = decodeStepMs
    self.generatedTokens = generatedTokens
  }

  public var prefillTokS: Double { prefillMs > 0 ? Double(promptTokens) / (prefillMs / 1e3) : 0 }
  /// nil when nothing was decoded (one generated token comes from the prefill's logits).
  public var decodeTokS: Double? {
    let total = decodeStepMs.reduce(0, +)
    return decodeStepMs.isEmpty || total <= 0 ? nil : Double(decodeStepMs.count) / (total / 1e3)
  }

  var json: [String: Any] {
    [
      "ttft_ms": ttftMs, "prefill_tok_s": prefillTokS, "decode_tok_s": decodeTokS as Any? ?? NSNull(),
      "generated_tokens": generatedTokens,
      "decode_ms_per_token": decodeStepMs.map { ($0 * 1e4).rounded() / 1e4 },
    ]
  }
}

/// A thermal-state or temperature reading during a run (bench schema `$defs/energy/thermal`).
public struct ThermalReading: Equatable {
  public let seconds: Double
  public let zone: String
  public let value: String  // iOS gives a state ("nominal", "fair", "serious", "critical"), not degrees

  public init(seconds: Double, zone: String, value: String) {
    self.seconds = seconds
    self.zone = zone
    self.value = value
  }
}

/// What the app can say about energy on iOS: no current or voltage API, so the battery level change, the process
/// CPU time (the energy proxy XCTCPUMetric also uses) and the thermal timeline.
public struct EnergyObservation: Equatable {
  public var batteryStartPct: Double?
  public var batteryEndPct: Double?
  public var batteryState: String?
  public var lowPowerMode: Bool?
  public var cpuSeconds: Double?
  public var wallSeconds: Double?
  public var thermal: [ThermalReading]
  public var sampleHz: Double

  public init(
    batteryStartPct: Double? = nil, batteryEndPct: Double? = nil, batteryState: String? = nil,
    lowPowerMode: Bool? = nil, cpuSeconds: Double? = nil, wallSeconds: Double? = nil,
    thermal: [ThermalReading] = [], sampleHz: Double = 1
  ) {
    self.batteryStartPct = batteryStartPct
    self.batteryEndPct = batteryEndPct
    self.batteryState = batteryState
    self.lowPowerMode = lowPowerMode
    self.cpuSeconds = cpuSeconds
    self.wallSeconds = wallSeconds
    self.thermal = thermal
    self.sampleHz = sampleHz
  }
}

public struct DeviceInfo: Equatable {
  public var model: String
  public var os: String
  public var arch: String
  public var cores: Int?
  public var ramBytes: UInt64?
  public var emulated: Bool

  public init(
    model: String, os: String, arch: String, cores: Int? = nil, ramBytes: UInt64? = nil,
    emulated: Bool = false
  ) {
    self.model = model
    self.os = os
    self.arch = arch
    self.cores = cores
    self.ramBytes = ramBytes
    self.emulated = emulated
  }
}

public struct BenchSettings: Equatable {
  public var promptLengths: [Int]
  public var generateTokens: Int
  public var runs: Int
  public var warmup: Int
  public var threads: Int?
  public var computeUnits: String?
  public var promptSource: String

  public init(
    promptLengths: [Int], generateTokens: Int, runs: Int, warmup: Int, threads: Int? = nil,
    computeUnits: String? = nil, promptSource: String
  ) throws {
    guard !promptLengths.isEmpty, promptLengths.allSatisfy({ $0 >= 1 }) else {
      throw BundleError("prompt lengths must be one or more values >= 1, got \(promptLengths)")
    }
    guard runs >= 1, warmup >= 0, generateTokens >= 0 else {
      throw BundleError("runs must be >= 1 (got \(runs)), warm-ups >= 0 (\(warmup)), tokens >= 0 (\(generateTokens))")
    }
    self.promptLengths = promptLengths
    self.generateTokens = generateTokens
    self.runs = runs
    self.warmup = warmup
    self.threads = threads
    self.computeUnits = computeUnits
    self.promptSource = promptSource
  }
}

/// One image size's measured runs for the bench schema's `images` rows (runtime/bench.py bench_images): the test
/// card before a short text prompt, greedy to the first token.
public struct ImageBenchRow: Equatable {
  public let size: ImageSizeSpec
  public let promptTokens: Int  // the whole prompt, the image's tokens included
  public var encodeMs: [Double] = []
  public var ttftMs: [Double] = []

  public init(size: ImageSizeSpec, promptTokens: Int) {
    self.size = size
    self.promptTokens = promptTokens
  }

  var json: [String: Any] {
    get throws {
      [
        "height": size.height, "width": size.width, "method": size.method, "tokens": size.tokens,
        "prompt_tokens": promptTokens, "encode_ms": try Stats(encodeMs).json, "ttft_ms": try Stats(ttftMs).json,
      ]
    }
  }
}

/// A benchmark result in the bench schema (runtime/schemas/bench.schema.json, version 1), producer "ios-app".
public struct BenchReport {
  public var manifest: Manifest
  public var bundlePath: String?
  public var device: DeviceInfo
  public var settings: BenchSettings
  public var runtime: String
  public var appVersion: String
  /// prompt length -> measured samples (warm-ups already dropped)
  public var samples: [Int: [RunSample]]
  public var peakMemoryBytes: UInt64?
  public var loadMs: Double?
  public var energy: EnergyObservation?
  public var notes: [String]
  public var created: Date
  /// Bundles with a vision section: the schema's `images` rows (absent from the JSON when empty).
  public var images: [ImageBenchRow] = []

  public init(
    manifest: Manifest, bundlePath: String?, device: DeviceInfo, settings: BenchSettings, runtime: String,
    appVersion: String, samples: [Int: [RunSample]], peakMemoryBytes: UInt64? = nil, loadMs: Double? = nil,
    energy: EnergyObservation? = nil, notes: [String] = [], created: Date = Date()
  ) {
    self.manifest = manifest
    self.bundlePath = bundlePath
    self.device = device
    self.settings = settings
    self.runtime = runtime
    self.appVersion = appVersion
    self.samples = samples
    self.peakMemoryBytes = peakMemoryBytes
    self.loadMs = loadMs
    self.energy = energy
    self.notes = notes
    self.created = created
  }

  public func json() throws -> [String: Any] {
    var results: [[String: Any]] = []
    for length in settings.promptLengths {
      guard let runs = samples[length], !runs.isEmpty else {
        throw BundleError("bench result: no measured run for prompt length \(length)")
      }
      let decode = runs.compactMap(\.decodeTokS)
      results.append([
        "prompt_tokens": length, "generate_tokens": settings.generateTokens,
        "ttft_ms": try Stats(runs.map(\.ttftMs)).json,
        "prefill_tok_s": try Stats(runs.map(\.prefillTokS)).json,
        "decode_tok_s": decode.isEmpty ? NSNull() : try Stats(decode).json as Any,
        "samples": runs.map(\.json),
      ])
    }
    let iso = ISO8601DateFormatter()
    iso.formatOptions = [.withInternetDateTime]
    var doc: [String: Any] = [
      "schema_version": 1, "format": "qwen-mobile-bench",
      "producer": ["name": "ios-app", "version": appVersion, "runtime": runtime],
      "created_utc": iso.string(from: created),
      "device": [
        "model": device.model, "os": device.os, "arch": device.arch, "cpu": NSNull(),
        "cores": device.cores as Any? ?? NSNull(),
        "ram_bytes": device.ramBytes.map { Int($0) } as Any? ?? NSNull(), "emulated": device.emulated,
      ],
      "bundle": [
        "hash": manifest.bundleHash, "path": bundlePath as Any? ?? NSNull(), "model_id": manifest.modelID,
        "model_size": manifest.modelSize as Any? ?? NSNull(), "params": manifest.params,
        "backend": manifest.backend, "recipe": manifest.recipeName, "qlinear": manifest.qlinear,
        "qembedding": manifest.qembedding, "group_size": manifest.groupSize, "bytes": Int(manifest.totalBytes),
      ],
      "settings": [
        "prompt_lengths": settings.promptLengths, "generate_tokens": settings.generateTokens, "runs": settings.runs,
        "warmup": settings.warmup, "threads": settings.threads as Any? ?? NSNull(),
        "prefill_chunk": manifest.maxPrefillTokens, "prompt_source": settings.promptSource,
      ],
      "results": results,
      "memory": [
        "peak_rss_bytes": peakMemoryBytes.map { Int($0) } as Any? ?? NSNull(), "load_ms": loadMs as Any? ?? NSNull(),
      ],
      "notes": notes + (settings.computeUnits.map { ["Core ML compute units: \($0)"] } ?? []),
    ]
    doc["energy"] = energy.map { energyJSON($0) } ?? NSNull()
    if !images.isEmpty { doc["images"] = try images.map { try $0.json } }
    return doc
  }

  func energyJSON(_ e: EnergyObservation) -> [String: Any] {
    var absent = ["joules", "joules_per_token", "mean_power_w", "idle_power_w", "charge_delta_uah"]
    var delta: Any = NSNull()
    if let a = e.batteryStartPct, let b = e.batteryEndPct { delta = b - a } else { absent.append("battery_delta_pct") }
    return [
      "source": "UIDevice.batteryLevel (1 % steps), ProcessInfo.thermalState, process CPU time",
      "sample_hz": e.sampleHz, "joules": NSNull(), "joules_per_token": NSNull(), "mean_power_w": NSNull(),
      "idle_power_w": NSNull(), "battery_delta_pct": delta, "charge_delta_uah": NSNull(),
      "thermal": e.thermal.map { ["t_s": $0.seconds, "zone": $0.zone, "value": $0.value] },
      "absent_fields": absent,
      // Beyond the schema's fields (it allows more): what iOS does give.
      "cpu_seconds": e.cpuSeconds as Any? ?? NSNull(), "wall_seconds": e.wallSeconds as Any? ?? NSNull(),
      "battery_state": e.batteryState as Any? ?? NSNull(), "low_power_mode": e.lowPowerMode as Any? ?? NSNull(),
    ]
  }

  public func data() throws -> Data { try JSONWriter.data(try json()) }
}
