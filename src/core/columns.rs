//! Column helpers the stages and the shared tables build their frames with.

/// A column that takes `values` over: `Column::new` copies a `Vec` (a second allocation of the
/// whole column, and fresh pages for the kernel to zero).
pub fn owned_column<T>(name: &str, values: Vec<T>) -> polars::prelude::Column
where
    polars::prelude::Series: polars::prelude::NamedFromOwned<Vec<T>>,
{
    use polars::prelude::{IntoColumn, NamedFromOwned, Series};
    Series::from_vec(name.into(), values).into_column()
}

/// `frames` one under the other (a table read or built in parts); `None` when there is none.
/// The first error stops the reading.
pub fn stack_frames<E>(
    frames: impl IntoIterator<Item = Result<polars::prelude::DataFrame, E>>,
) -> Result<Option<polars::prelude::DataFrame>, E>
where
    E: From<polars::prelude::PolarsError>,
{
    let mut all: Option<polars::prelude::DataFrame> = None;
    for frame in frames {
        let frame = frame?;
        match &mut all {
            Some(all) => {
                all.vstack_mut_owned(frame)?;
            }
            None => all = Some(frame),
        }
    }
    Ok(all)
}

/// The distinct texts of `arrays` (the chunks of one column) in order of first appearance, and
/// each row's position among them (`u32::MAX` for null); none past `most` distinct texts. A row
/// is looked up by its view first: equal views hold equal text (within an array, whose buffers
/// a view names), and the text columns the stages build are gathered from a handful of names,
/// so their views repeat — a small hash lookup per row instead of hashing its text.
pub fn text_codes<'a>(
    arrays: impl IntoIterator<Item = &'a polars_arrow::array::Utf8ViewArray>,
    most: usize,
) -> Option<(Vec<&'a str>, Vec<u32>)> {
    use polars_arrow::array::Array;
    type Map<K> = hashbrown::HashMap<K, u32, foldhash::fast::FixedState>;
    let mut texts: Map<&str> = Map::default();
    let mut distinct = Vec::new();
    let mut codes = Vec::new();
    for array in arrays {
        let mut views: Map<u128> = Map::default();
        codes.reserve(array.len());
        for (row, view) in array.views().iter().enumerate() {
            if array.is_null(row) {
                codes.push(u32::MAX);
                continue;
            }
            let code = match views.get(&view.as_u128()) {
                Some(&code) => code,
                None => {
                    // Once per distinct view, so the bounds check costs nothing measurable.
                    let text = array.value(row);
                    let code = *texts.entry(text).or_insert_with(|| {
                        distinct.push(text);
                        (distinct.len() - 1) as u32
                    });
                    if distinct.len() > most {
                        return None;
                    }
                    views.insert(view.as_u128(), code);
                    code
                }
            };
            codes.push(code);
        }
    }
    Some((distinct, codes))
}
