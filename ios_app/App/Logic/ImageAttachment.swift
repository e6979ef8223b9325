import Foundation
import QwenMobileKit

/// Whether the chat offers the image button: the bundle must have a `vision` section and the engine must run its
/// image methods (`ImageInferenceEngine`: the ExecuTorch and the Core ML engine both do; a test double may not).
public enum ImageSupport {
  /// nil when images can be attached; otherwise why not, in one line (shown beside the disabled button).
  public static func unavailableReason(manifest: Manifest, engine: InferenceEngine) -> String? {
    guard let vision = manifest.vision else {
      return "images: this bundle has no vision section (exported from a text-only checkpoint or with --no-vision): "
        + "it takes text only"
    }
    if vision.images.isEmpty { return "images: this bundle's vision section lists no image sizes" }
    guard engine is ImageInferenceEngine else {
      return "images: \(engine.runtimeDescription) does not run a bundle's image methods yet"
    }
    return nil
  }
}

/// The one image waiting for the next prompt: the picked photo's upright size and what it became.
public struct ImageAttachment: Equatable {
  public let photoWidth: Int
  public let photoHeight: Int
  public let size: ImageSizeSpec
  public let image: ImageRGB
  /// The EXIF orientation the decoder applied (1: none).
  public let orientation: Int

  /// `image` must be at one of the bundle's sizes (ImageRGB.forBundle's output); the photo's size is the upright one.
  public init(photoWidth: Int, photoHeight: Int, orientation: Int = 1, image: ImageRGB, vision: VisionSpec) throws {
    guard photoWidth >= 1, photoHeight >= 1 else {
      throw BundleError("image: the photo is \(photoWidth)x\(photoHeight) (WxH) pixels")
    }
    size = try vision.size(height: image.height, width: image.width)
    self.photoWidth = photoWidth
    self.photoHeight = photoHeight
    self.orientation = orientation
    self.image = image
  }

  /// True when the photo has fewer pixels than the size it went to (the rule found no size of its shape that fits).
  public var upscaled: Bool { size.height * size.width > photoHeight * photoWidth }

  /// "image attached: 4032x3024 (WxH) -> 336x448 (HxW), 192 image tokens": the photo in the platform's W x H, the
  /// bundle's size in the contract's H x W, plus an upscale or an EXIF rotation when there was one.
  public var statusLine: String {
    var s = "image attached: \(photoWidth)x\(photoHeight) (WxH) -> \(size) (HxW), \(size.tokens) image tokens"
    if upscaled { s += ", upscaled: smaller than every size of its shape" }
    if (2...8).contains(orientation) { s += ", EXIF orientation \(orientation) applied" }
    return s
  }

  /// The transcript's mark for the user turn that carried it, e.g. "[image 336x448]".
  public var transcriptMark: String { "[image \(size)]" }
}

/// How large to decode a photo (ImageIO's thumbnail, which applies the EXIF orientation and downsamples) so that
/// ImageRGB.forBundle, which applies the contract's rule to the decoded image, still picks the size the rule picks
/// for the whole photo, without decoding a 48-megapixel photo at full size.
public enum ImageDecodePlan {
  /// The upright size of a photo stored as width x height with EXIF `orientation` (5...8 store it on its side).
  public static func upright(width: Int, height: Int, orientation: Int) -> (width: Int, height: Int) {
    (5...8).contains(orientation) ? (height, width) : (width, height)
  }

  /// The long side to decode the upright width x height photo at (kCGImageSourceThumbnailMaxPixelSize): the smallest
  /// that leaves at least the chosen size on both axes and the same choice whether the decoder rounds the short side
  /// down or up; the photo's own long side when it is no larger than the chosen size.
  public static func maxPixelSize(width: Int, height: Int, vision: VisionSpec) throws -> Int {
    let target = try vision.chooseSize(height: height, width: width)
    let long = max(width, height)
    let short = min(width, height)
    let (targetLong, targetShort) = width >= height ? (target.width, target.height) : (target.height, target.width)
    // In integers: floor(short * side / long) >= targetShort from this side on (no floating-point ceil to overshoot).
    var side = max(targetLong, (targetShort * long + short - 1) / short)
    while side < long {
      let down = short * side / long
      let up = (short * side + long - 1) / long
      let fits = [down, up].allSatisfy { s -> Bool in
        let (w, h) = width >= height ? (side, s) : (s, side)
        guard w >= target.width, h >= target.height else { return false }
        return (try? vision.chooseSize(height: h, width: w)) == target
      }
      if fits { return side }
      side += 1
    }
    return long
  }
}
