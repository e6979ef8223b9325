import Foundation
import QwenMobileKit

#if canImport(UIKit)
  import UIKit
#endif
#if canImport(Darwin)
  import Darwin
#else
  import Glibc
#endif

/// What the device says about power and heat at one moment.
public struct DeviceSnapshot: Equatable {
  public var batteryPct: Double?  // nil when unknown (simulator, monitoring off)
  public var batteryState: String
  public var lowPowerMode: Bool
  public var thermal: String  // nominal, fair, serious, critical

  public init(batteryPct: Double?, batteryState: String, lowPowerMode: Bool, thermal: String) {
    self.batteryPct = batteryPct
    self.batteryState = batteryState
    self.lowPowerMode = lowPowerMode
    self.thermal = thermal
  }
}

/// The readings a benchmark needs, behind a protocol so the loop is tested on Linux with a scripted device.
public protocol DeviceProbe: AnyObject {
  func snapshot() -> DeviceSnapshot
  /// CPU time of this process (user + system) in seconds: the energy proxy iOS allows (XCTCPUMetric measures the
  /// same), since there is no current or voltage API.
  func cpuSeconds() -> Double
  func peakMemoryBytes() -> UInt64?
  func sleep(seconds: Double)
  func now() -> Double
  func deviceInfo() -> DeviceInfo
}

/// The real device: UIDevice battery (monitoring switched on), ProcessInfo thermal state and low power mode,
/// getrusage for CPU time and peak memory.
#if canImport(Darwin)
  private let rusageSelf = RUSAGE_SELF
#else
  private let rusageSelf = RUSAGE_SELF.rawValue  // Glibc imports it as an enum case
#endif

public final class SystemDeviceProbe: DeviceProbe {
  public init() {
    #if canImport(UIKit)
      UIDevice.current.isBatteryMonitoringEnabled = true
    #endif
  }

  public func snapshot() -> DeviceSnapshot {
    #if canImport(UIKit)
      let device = UIDevice.current
      let level = device.batteryLevel
      let state: String
      switch device.batteryState {
      case .unplugged: state = "unplugged"
      case .charging: state = "charging"
      case .full: state = "full"
      default: state = "unknown"
      }
      return DeviceSnapshot(
        batteryPct: level >= 0 ? Double(level) * 100 : nil, batteryState: state,
        lowPowerMode: ProcessInfo.processInfo.isLowPowerModeEnabled,
        thermal: SystemDeviceProbe.thermalName(ProcessInfo.processInfo.thermalState))
    #else
      return DeviceSnapshot(batteryPct: nil, batteryState: "unknown", lowPowerMode: false, thermal: "nominal")
    #endif
  }

  #if canImport(UIKit)
    public static func thermalName(_ state: ProcessInfo.ThermalState) -> String {
      switch state {
      case .nominal: return "nominal"
      case .fair: return "fair"
      case .serious: return "serious"
      case .critical: return "critical"
      @unknown default: return "unknown"
      }
    }
  #endif

  public func cpuSeconds() -> Double {
    var usage = rusage()
    getrusage(rusageSelf, &usage)
    func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
    return seconds(usage.ru_utime) + seconds(usage.ru_stime)
  }

  public func peakMemoryBytes() -> UInt64? {
    var usage = rusage()
    getrusage(rusageSelf, &usage)
    #if canImport(Darwin)
      return UInt64(usage.ru_maxrss)  // bytes on Darwin
    #else
      return UInt64(usage.ru_maxrss) * 1024  // KiB on Linux
    #endif
  }

  public func sleep(seconds: Double) { Thread.sleep(forTimeInterval: seconds) }

  public func now() -> Double { ProcessInfo.processInfo.systemUptime }

  public func deviceInfo() -> DeviceInfo {
    var system = utsname()
    uname(&system)
    let machine = withUnsafeBytes(of: &system.machine) { raw in
      String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
    }
    #if canImport(UIKit)
      let os = "\(UIDevice.current.systemName) \(UIDevice.current.systemVersion)"
    #else
      let os = ProcessInfo.processInfo.operatingSystemVersionString
    #endif
    #if targetEnvironment(simulator)
      let emulated = true
    #else
      let emulated = false
    #endif
    return DeviceInfo(
      model: machine, os: os, arch: "arm64", cores: ProcessInfo.processInfo.activeProcessorCount,
      ramBytes: ProcessInfo.processInfo.physicalMemory, emulated: emulated)
  }
}
