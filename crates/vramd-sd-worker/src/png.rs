//! Images as PNG (8-bit RGB) with text chunks, and base64 for the wire.
//!
//! Each `(keyword, text)` pair becomes a `tEXt` chunk (Latin-1, as A1111 writes its
//! `parameters`); a text that Latin-1 cannot carry (a prompt in Japanese) goes into an `iTXt`
//! chunk (UTF-8) instead, so nothing is mangled. Keywords are checked up front by
//! [`check_keyword`]: 1–79 printable Latin-1 characters, no leading, trailing or double
//! spaces, as the PNG specification requires.

use base64::Engine as _;

use crate::sd::RgbImage;

/// Encodes `img` as PNG with `texts` as text chunks.
pub fn encode(img: &RgbImage, texts: &[(String, String)]) -> Result<Vec<u8>, String> {
    let expected = img.width as usize * img.height as usize * 3;
    if img.pixels.len() != expected {
        return Err(format!(
            "{}×{} image has {} bytes, expected {expected}",
            img.width,
            img.height,
            img.pixels.len()
        ));
    }
    let mut out = Vec::with_capacity(expected / 2 + 1024);
    let mut encoder = ::png::Encoder::new(&mut out, img.width, img.height);
    encoder.set_color(::png::ColorType::Rgb);
    encoder.set_depth(::png::BitDepth::Eight);
    for (keyword, text) in texts {
        check_keyword(keyword)?;
        let added = if is_latin1(text) {
            encoder.add_text_chunk(keyword.clone(), text.clone())
        } else {
            encoder.add_itxt_chunk(keyword.clone(), text.clone())
        };
        added.map_err(|e| format!("PNG text chunk {keyword:?}: {e}"))?;
    }
    let mut writer = encoder.write_header().map_err(|e| format!("PNG header: {e}"))?;
    writer
        .write_image_data(&img.pixels)
        .map_err(|e| format!("PNG data: {e}"))?;
    writer.finish().map_err(|e| format!("PNG end: {e}"))?;
    Ok(out)
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Whether `keyword` may name a PNG text chunk; the error says why not.
pub fn check_keyword(keyword: &str) -> Result<(), String> {
    let n = keyword.chars().count();
    let printable = keyword
        .chars()
        .all(|c| (' '..='~').contains(&c) || ('\u{a1}'..='\u{ff}').contains(&c));
    if n == 0 || n > 79 {
        return Err(format!("PNG text keyword {keyword:?}: 1 to 79 characters"));
    }
    if !printable || keyword.starts_with(' ') || keyword.ends_with(' ') || keyword.contains("  ") {
        return Err(format!(
            "PNG text keyword {keyword:?}: printable Latin-1 only, no leading, trailing or double spaces"
        ));
    }
    Ok(())
}

fn is_latin1(text: &str) -> bool {
    text.chars().all(|c| (c as u32) <= 0xff && c != '\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> RgbImage {
        RgbImage {
            width: 3,
            height: 2,
            pixels: (0..18).collect(),
        }
    }

    #[test]
    fn round_trips_pixels_and_texts() {
        let texts = vec![
            ("parameters".to_string(), "a cat, Steps: 2, Seed: 42".to_string()),
            ("Comment".to_string(), "猫".to_string()),
        ];
        let bytes = encode(&image(), &texts).unwrap();
        let decoder = ::png::Decoder::new(&bytes[..]);
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let frame = reader.next_frame(&mut buf).unwrap();
        assert_eq!((frame.width, frame.height), (3, 2));
        assert_eq!(frame.color_type, ::png::ColorType::Rgb);
        assert_eq!(&buf[..frame.buffer_size()], &image().pixels[..]);
        let info = reader.info();
        assert_eq!(info.uncompressed_latin1_text.len(), 1);
        assert_eq!(info.uncompressed_latin1_text[0].keyword, "parameters");
        assert_eq!(info.uncompressed_latin1_text[0].text, "a cat, Steps: 2, Seed: 42");
        assert_eq!(info.utf8_text.len(), 1);
        assert_eq!(info.utf8_text[0].get_text().unwrap(), "猫");
    }

    #[test]
    fn bad_keywords_and_sizes_are_refused() {
        assert!(check_keyword("parameters").is_ok());
        assert!(check_keyword("").is_err());
        assert!(check_keyword(&"k".repeat(80)).is_err());
        assert!(check_keyword(" lead").is_err());
        assert!(check_keyword("tab\there").is_err());
        assert!(check_keyword("猫").is_err());
        let mut short = image();
        short.pixels.pop();
        assert!(encode(&short, &[]).is_err());
        assert_eq!(base64(b"hi!?"), "aGkhPw==");
    }
}
