import Foundation

/// Summary statistics as runtime/bench.py computes them: median (mean of the middle two for an even count),
/// linear-interpolated percentiles (numpy's default), mean, min, max.
public struct Stats: Equatable {
  public let median: Double
  public let p10: Double
  public let p90: Double
  public let mean: Double
  public let min: Double
  public let max: Double

  public init(_ values: [Double]) throws {
    guard !values.isEmpty else { throw BundleError("statistics of an empty series") }
    let sorted = values.sorted()
    let n = sorted.count
    median = n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    p10 = Stats.percentile(sorted: sorted, 10)
    p90 = Stats.percentile(sorted: sorted, 90)
    mean = sorted.reduce(0, +) / Double(n)
    min = sorted[0]
    max = sorted[n - 1]
  }

  public static func percentile(sorted: [Double], _ q: Double) -> Double {
    if sorted.count == 1 { return sorted[0] }
    let pos = Double(sorted.count - 1) * q / 100
    let lo = Int(pos)
    let hi = Swift.min(lo + 1, sorted.count - 1)
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - Double(lo))
  }

  public var json: [String: Any] {
    ["median": median, "p10": p10, "p90": p90, "mean": mean, "min": min, "max": max]
  }
}
