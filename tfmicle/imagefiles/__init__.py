"""Image files, for data_prep, tfmicle.score and serving alike (foundation: no
TensorFlow until the decode check runs, pydicom only for DICOM files).

- ``kinds``: the one table of image types (signature, file names, who takes each as it
  is), ``sniff``, ``is_image_file``, and ``ImageError``;
- ``encode``: Pillow decode, EXIF orientation, resizing, pixel limits, 16-bit and
  DICOM conversion -> JPEG / PNG bytes (``load_image``, ``encode_bytes``,
  ``convert_bytes``, ``header_size``, ``verify``);
- ``dicom``: modality / VOI LUT, MONOCHROME1, 8 bits; the header before decoding;
- ``tfdecode``: the TensorFlow decode check and its one-line error messages.

Map: docs/architecture.md.
"""
from tfmicle.imagefiles.dicom import dicom_to_uint8
from tfmicle.imagefiles.encode import (FULL_SIZE, EncodedImage, ImageOptions, convert_bytes,
                                       encode_bytes, header_size, load_image, verify)
from tfmicle.imagefiles.kinds import (IMAGE_EXTENSIONS, PASSING, SERVED, ImageError, ImageKind,
                                      is_image_file, one_of, sniff, tf_decodes_directly)
from tfmicle.imagefiles.tfdecode import decode_error, tf_error_message

__all__ = ["FULL_SIZE", "IMAGE_EXTENSIONS", "PASSING", "SERVED", "EncodedImage", "ImageError",
           "ImageKind", "ImageOptions", "convert_bytes", "decode_error", "dicom_to_uint8",
           "encode_bytes", "header_size", "is_image_file", "load_image", "one_of", "sniff",
           "tf_decodes_directly", "tf_error_message", "verify"]
