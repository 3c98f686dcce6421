//! Files as the outside world sends them, for tests of what Mage accepts.

/// An EXIF APP1 segment (big-endian TIFF) with Orientation = 6 (rotate
/// 90° clockwise to display) and a GPS IFD: latitude 48°51'24.05" N and a
/// processing method holding `marker`.
pub fn exif_app1(marker: &[u8]) -> Vec<u8> {
    let mut tiff: Vec<u8> = b"MM\x00\x2a\x00\x00\x00\x08".to_vec();
    let entry = |tiff: &mut Vec<u8>, tag: u16, kind: u16, count: u32, value: [u8; 4]| {
        tiff.extend(tag.to_be_bytes());
        tiff.extend(kind.to_be_bytes());
        tiff.extend(count.to_be_bytes());
        tiff.extend(value);
    };
    // IFD0 at 8: two entries, then the GPS IFD at 8 + 2 + 24 + 4 = 38.
    tiff.extend(2u16.to_be_bytes());
    entry(&mut tiff, 0x0112, 3, 1, [0, 6, 0, 0]);
    entry(&mut tiff, 0x8825, 4, 1, 38u32.to_be_bytes());
    tiff.extend(0u32.to_be_bytes());
    // GPS IFD: three entries; its data follows at 38 + 2 + 36 + 4 = 80.
    assert_eq!(tiff.len(), 38);
    tiff.extend(3u16.to_be_bytes());
    entry(&mut tiff, 0x0001, 2, 2, *b"N\0\0\0");
    entry(&mut tiff, 0x0002, 5, 3, 80u32.to_be_bytes());
    let method = [b"ASCII\0\0\0".as_slice(), marker].concat();
    entry(&mut tiff, 0x001b, 7, method.len() as u32, 104u32.to_be_bytes());
    tiff.extend(0u32.to_be_bytes());
    assert_eq!(tiff.len(), 80);
    for (num, den) in [(48u32, 1u32), (51, 1), (2405, 100)] {
        tiff.extend(num.to_be_bytes());
        tiff.extend(den.to_be_bytes());
    }
    tiff.extend(&method);
    let mut app1 = vec![0xff, 0xe1];
    app1.extend(u16::try_from(2 + 6 + tiff.len()).expect("fixture").to_be_bytes());
    app1.extend(b"Exif\0\0");
    app1.extend(tiff);
    app1
}
