import Foundation
import XCTest

@testable import QwenMobileKit

final class StatisticsTests: XCTestCase {
  /// Values from runtime/bench.py stats() on the same series (statistics.median, numpy-style percentiles).
  func testMatchesPythonStats() throws {
    let s = try Stats([3.0, 1.0, 4.0, 1.5, 9.25, 2.0])
    XCTAssertEqual(s.median, 2.5)
    XCTAssertEqual(s.p10, 1.25, accuracy: 1e-12)
    XCTAssertEqual(s.p90, 6.625, accuracy: 1e-12)
    XCTAssertEqual(s.mean, 3.4583333333333335, accuracy: 1e-12)
    XCTAssertEqual([s.min, s.max], [1.0, 9.25])
    let one = try Stats([7.5])
    XCTAssertEqual([one.median, one.p10, one.p90], [7.5, 7.5, 7.5])
    XCTAssertThrowsError(try Stats([]))
  }
}
