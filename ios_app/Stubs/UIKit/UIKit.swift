// Linux-only stand-in for the UIKit and Foundation (Apple-only) calls the app's logic makes: battery and device
// information, thermal state, low power mode. Each declaration names the SDK page it mirrors
// (https://developer.apple.com/documentation/...). Values are fixed placeholders so the logic type-checks here.
#if os(Linux)
  import Foundation

  /// uikit/uidevice
  open class UIDevice {
    public static let current = UIDevice()
    /// uikit/uidevice/batterystate-swift.enum
    public enum BatteryState: Int {
      case unknown = 0
      case unplugged
      case charging
      case full
    }
    /// uikit/uidevice/isbatterymonitoringenabled
    open var isBatteryMonitoringEnabled = false
    /// uikit/uidevice/batterylevel: 0...1, or -1 when monitoring is off
    open var batteryLevel: Float { -1 }
    /// uikit/uidevice/batterystate-swift.property
    open var batteryState: BatteryState { .unknown }
    /// uikit/uidevice/systemname
    open var systemName: String { "Linux" }
    /// uikit/uidevice/systemversion
    open var systemVersion: String { "0" }
  }

  /// uikit/uiapplication (the Benchmark screen keeps the screen on; declared so that call type-checks too)
  open class UIApplication {
    public static let shared = UIApplication()
    /// uikit/uiapplication/isidletimerdisabled: keeps the screen on through a benchmark
    open var isIdleTimerDisabled = false
  }

  /// foundation/processinfo/thermalstate-swift.enum (not in swift-corelibs-foundation)
  public enum AppleThermalState: Int {
    case nominal = 0
    case fair
    case serious
    case critical
  }

  extension ProcessInfo {
    /// foundation/processinfo/thermalstate-swift.property
    public var thermalState: AppleThermalState { .nominal }
    /// foundation/processinfo/islowpowermodeenabled
    public var isLowPowerModeEnabled: Bool { false }
    public typealias ThermalState = AppleThermalState
  }
#endif
