import Foundation

/// The portable sampling rule (runtime/SAMPLING.md, reference runtime/sampling.py): repetition penalty, temperature,
/// top-k, top-p, then one SplitMix64 draw per sampled token, all in float64 with sequential sums in a stated order,
/// so the same seed, logits and context give the same token in Python, C++, Java and Swift.
public struct SamplingConfig: Equatable {
  public var temperature: Double
  public var topK: Int
  public var topP: Double
  public var repetitionPenalty: Double
  public var seed: UInt64

  public init(
    temperature: Double = 0, topK: Int = 0, topP: Double = 1, repetitionPenalty: Double = 1,
    seed: UInt64 = 0
  ) throws {
    guard temperature >= 0, topK >= 0, topP > 0, topP <= 1, repetitionPenalty > 0 else {
      throw BundleError(
        "sampling settings out of range: temperature \(temperature) (>= 0), top-k \(topK) (>= 0), "
          + "top-p \(topP) (0 < p <= 1), repetition penalty \(repetitionPenalty) (> 0)")
    }
    self.temperature = temperature
    self.topK = topK
    self.topP = topP
    self.repetitionPenalty = repetitionPenalty
    self.seed = seed
  }

  public static let greedy = try! SamplingConfig()
  public var isGreedy: Bool { temperature == 0 }
}

/// Steele, Lea and Flood's SplitMix64: bit-exact in every language (wrapping UInt64 arithmetic).
public struct SplitMix64 {
  public private(set) var state: UInt64
  public init(seed: UInt64) { state = seed }

  public mutating func next() -> UInt64 {
    state = state &+ 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }

  /// A Double in [0, 1) from the top 53 bits of one draw.
  public mutating func nextUnit() -> Double { Double(next() >> 11) * 0x1p-53 }
}

public struct Sampler {
  public let config: SamplingConfig
  private var rng: SplitMix64

  public init(_ config: SamplingConfig) {
    self.config = config
    rng = SplitMix64(seed: config.seed)
  }

  /// One token from `logits` [vocab]; `context` is every token so far (prompt and generated), for the penalty.
  public mutating func sample(_ logits: [Float], context: [Int]) -> Int {
    var s = Sampler.filteredScores(logits, context: context, config: config)
    if config.isGreedy { return Sampler.argmax(s) }
    let unit = rng.nextUnit()
    return Sampler.draw(&s, unit: unit)
  }

  /// The lowest index among equal maxima.
  public static func argmax(_ s: [Double]) -> Int {
    var best = 0
    for i in 1..<s.count where s[i] > s[best] { best = i }
    return best
  }

  /// Float64 scores: penalised, tempered, and -inf outside top-k / top-p (steps 1 to 5 of the rule).
  public static func filteredScores(_ logits: [Float], context: [Int], config: SamplingConfig) -> [Double] {
    var s = logits.map { Double($0) }
    if config.repetitionPenalty != 1, !context.isEmpty {
      for id in Set(context) where id >= 0 && id < s.count {
        s[id] = s[id] < 0 ? s[id] * config.repetitionPenalty : s[id] / config.repetitionPenalty
      }
    }
    if config.isGreedy { return s }
    for i in s.indices { s[i] /= config.temperature }
    let v = s.count
    if config.topK > 0 && config.topK < v {
      let kth = s.sorted(by: >)[config.topK - 1]
      for i in s.indices where s[i] < kth { s[i] = -.infinity }
    }
    if config.topP < 1 {
      // Ascending by score, ties by index: every runtime drops the same tokens.
      let order = s.indices.sorted { s[$0] < s[$1] || (s[$0] == s[$1] && $0 < $1) }
      let m = s[order[v - 1]]
      var cumulative = [Double](repeating: 0, count: v)
      var running = 0.0
      for j in 0..<v {
        running += Foundation.exp(s[order[j]] - m)
        cumulative[j] = running
      }
      let total = cumulative[v - 1]
      let threshold = 1 - config.topP
      for j in 0..<(v - 1) where cumulative[j] / total <= threshold { s[order[j]] = -.infinity }
    }
    return s
  }

  /// Step 6: the first index whose cumulative weight (summed in index order) exceeds unit x total.
  public static func draw(_ s: inout [Double], unit: Double) -> Int {
    let m = s.max() ?? 0
    var cumulative = [Double](repeating: 0, count: s.count)
    var running = 0.0
    for i in s.indices {
      running += Foundation.exp(s[i] - m)
      cumulative[i] = running
    }
    let target = unit * running
    for i in s.indices where cumulative[i] > target && Foundation.exp(s[i] - m) > 0 { return i }
    return s.indices.last { Foundation.exp(s[$0] - m) > 0 } ?? 0
  }
}
