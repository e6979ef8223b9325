#if canImport(ImageIO) && canImport(CoreGraphics)
  import CoreGraphics
  import Foundation
  import ImageIO
  import QwenMobileEngines
  import QwenMobileKit

  /// A picked photo's bytes (PhotosPicker's Data: HEIC, JPEG, PNG, ...) -> the chat's attachment. ImageIO decodes it
  /// upright (EXIF orientation applied, as runtime/images.py's exif_transpose on the host) and already downsampled to
  /// ImageDecodePlan's size; ImageRGB.forBundle then scales it to the bundle's size over white and packs it to RGB.
  /// Apple platforms only (no ImageIO on Linux): the size arithmetic it relies on is ImageDecodePlan, tested on Linux.
  public enum PhotoDecoder {
    /// The attachment and the decoded picture (for the thumbnail).
    public static func attachment(from data: Data, vision: VisionSpec) throws -> (ImageAttachment, CGImage) {
      guard let source = CGImageSourceCreateWithData(data as CFData, nil), CGImageSourceGetCount(source) > 0 else {
        throw BundleError(
          "image: ImageIO cannot read the picked file (\(data.count) bytes): not an image format iOS decodes")
      }
      let properties = CGImageSourceCopyPropertiesAtIndex(source, 0, nil) as? [CFString: Any] ?? [:]
      guard let storedWidth = (properties[kCGImagePropertyPixelWidth] as? NSNumber)?.intValue,
        let storedHeight = (properties[kCGImagePropertyPixelHeight] as? NSNumber)?.intValue,
        storedWidth > 0, storedHeight > 0
      else {
        throw BundleError("image: the picked file has no pixel size (ImageIO read no image properties)")
      }
      let orientation = (properties[kCGImagePropertyOrientation] as? NSNumber)?.intValue ?? 1
      let upright = ImageDecodePlan.upright(width: storedWidth, height: storedHeight, orientation: orientation)
      let planned = try vision.chooseSize(height: upright.height, width: upright.width)
      let side = try ImageDecodePlan.maxPixelSize(width: upright.width, height: upright.height, vision: vision)
      var decoded = try thumbnail(source, maxPixelSize: side)
      if (try? vision.chooseSize(height: decoded.height, width: decoded.width)) != planned {
        // ImageIO rounded the short side outside the plan: decode the whole photo, whose size the rule saw.
        decoded = try thumbnail(source, maxPixelSize: max(upright.width, upright.height))
      }
      let image = try ImageRGB.forBundle(decoded, vision: vision)
      let attachment = try ImageAttachment(
        photoWidth: upright.width, photoHeight: upright.height, orientation: orientation, image: image, vision: vision)
      return (attachment, decoded)
    }

    static func thumbnail(_ source: CGImageSource, maxPixelSize: Int) throws -> CGImage {
      let options: [CFString: Any] = [
        kCGImageSourceCreateThumbnailFromImageAlways: true,
        kCGImageSourceCreateThumbnailWithTransform: true,
        kCGImageSourceShouldCacheImmediately: true,
        kCGImageSourceThumbnailMaxPixelSize: maxPixelSize,
      ]
      guard let image = CGImageSourceCreateThumbnailAtIndex(source, 0, options as CFDictionary) else {
        throw BundleError("image: ImageIO could not decode the picked file (at most \(maxPixelSize) pixels a side)")
      }
      return image
    }
  }
#endif
