//! `__merge_<policy>(ts, dataset, v1, v2, ...)`: one fused aggregate that
//! picks, per profile, the winning record of every attribute (or field group)
//! whose rule picks one record: most recent, least recent, or dataset
//! precedence. The ranking key (time, dataset) is compared once per row and
//! attribute, with no sort: each attribute keeps its own winner because nulls
//! never win (a record is a candidate for an attribute when the value is not
//! null; for a field group, when any field is not null).
//!
//! Order, best first (ties go to the next key):
//! * most recent: newest time, then the first dataset in name order, then the
//!   smallest value;
//! * least recent: oldest time, then dataset order, then the smallest value;
//! * precedence: first listed dataset (unlisted datasets are not candidates),
//!   then newest time, then the smallest value.
//!
//! When the key and the value tie too, the winners are interchangeable (same
//! value, time and dataset), so the result never depends on the input order.
//!
//! Values are not copied per update: the accumulator keeps the input arrays
//! that hold a winner and each winner's (array, row), and compacts them into
//! one array when they outgrow the number of profiles, so memory stays about
//! one input batch plus the per-profile winners. It returns a struct with
//! `<slot>`, `<slot>__ts` and `<slot>__ds` per slot; its partial state is
//! those same columns.

use std::cmp::Ordering;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, StructArray, TimestampMicrosecondArray, UInt32Array,
    make_comparator, new_null_array,
};
use datafusion::arrow::compute::{SortOptions, interleave};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, TimestampMicrosecondType};
use datafusion::common::{exec_err, not_impl_err};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};

use crate::engine::udf::timestamp_type;

/// How a slot ranks its candidates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Order {
    MostRecent,
    LeastRecent,
    /// Rank of each dataset index (`None`: not a candidate).
    Precedence(Vec<Option<u32>>),
}

/// One output of the aggregate: an attribute, or a field group (a struct).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Slot {
    pub name: String,
    pub order: Order,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Winners {
    name: String,
    slots: Vec<Slot>,
    signature: Signature,
}

/// The aggregate for one policy's slots, named `name`.
pub fn udaf(name: &str, slots: Vec<Slot>) -> AggregateUDF {
    AggregateUDF::new_from_impl(Winners {
        name: name.to_string(),
        slots,
        signature: Signature::variadic_any(Volatility::Immutable),
    })
}

/// `(name, slots)` of `f` when it is a winners aggregate: what a cluster
/// executor needs to make it again ([`udaf`]).
pub fn spec_of(f: &AggregateUDF) -> Option<(String, Vec<Slot>)> {
    f.inner()
        .downcast_ref::<Winners>()
        .map(|w| (w.name.clone(), w.slots.clone()))
}

const NONE: u32 = u32::MAX;

/// The output (and state) fields: `<slot>`, `<slot>__ts`, `<slot>__ds` per slot.
fn fields(slots: &[Slot], types: &[DataType]) -> Fields {
    let mut f = Vec::with_capacity(slots.len() * 3);
    for (s, t) in slots.iter().zip(types) {
        f.push(Field::new(&s.name, t.clone(), true));
        f.push(Field::new(
            format!("{}__ts", s.name),
            timestamp_type(),
            true,
        ));
        f.push(Field::new(
            format!("{}__ds", s.name),
            DataType::UInt32,
            true,
        ));
    }
    Fields::from(f)
}

impl AggregateUDFImpl for Winners {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        if arg_types.len() != self.slots.len() + 2 {
            return exec_err!(
                "{} takes a time, a dataset and {} values",
                self.name,
                self.slots.len()
            );
        }
        Ok(DataType::Struct(fields(&self.slots, &arg_types[2..])))
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        not_impl_err!(
            "{} is only computed per group (GROUP BY profile_id)",
            self.name
        )
    }

    fn state_fields(&self, args: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        match args.return_type() {
            DataType::Struct(f) => Ok(f.iter().cloned().collect()),
            t => exec_err!("{}: unexpected return type {t}", self.name),
        }
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> DfResult<Box<dyn GroupsAccumulator>> {
        let DataType::Struct(out) = args.return_type() else {
            return exec_err!("{}: unexpected return type", self.name);
        };
        let slots = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| SlotState {
                order: s.order.clone(),
                data_type: out[i * 3].data_type().clone(),
                ts: Vec::new(),
                ds: Vec::new(),
                loc: Vec::new(),
                arrays: Vec::new(),
                retained: 0,
            })
            .collect();
        Ok(Box::new(WinnersAcc {
            fields: out.clone(),
            slots,
        }))
    }
}

struct SlotState {
    order: Order,
    data_type: DataType,
    /// Per group: the winner's time and dataset (`NONE`: no winner yet).
    ts: Vec<i64>,
    ds: Vec<u32>,
    /// Per group: the winner's (array, row) in `arrays`.
    loc: Vec<(u32, u32)>,
    arrays: Vec<ArrayRef>,
    /// Rows held by `arrays`.
    retained: usize,
}

impl SlotState {
    /// `Less` when a candidate (ts, ds) beats the current winner (ts, ds).
    fn rank(&self, ts: i64, ds: u32, cur_ts: i64, cur_ds: u32) -> Option<Ordering> {
        Some(match &self.order {
            Order::MostRecent => cur_ts.cmp(&ts).then(ds.cmp(&cur_ds)),
            Order::LeastRecent => ts.cmp(&cur_ts).then(ds.cmp(&cur_ds)),
            Order::Precedence(rank) => {
                let r = (*rank.get(ds as usize)?)?;
                let c = rank
                    .get(cur_ds as usize)
                    .copied()
                    .flatten()
                    .unwrap_or(u32::MAX);
                r.cmp(&c).then(cur_ts.cmp(&ts)).then(ds.cmp(&cur_ds))
            }
        })
    }

    /// Whether dataset `ds` can give this slot a value at all.
    fn considers(&self, ds: u32) -> bool {
        match &self.order {
            Order::Precedence(rank) => rank.get(ds as usize).copied().flatten().is_some(),
            _ => true,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        ts: &TimestampMicrosecondArray,
        ds: &UInt32Array,
        values: &ArrayRef,
        candidate: &dyn Fn(usize) -> bool,
        groups: &[usize],
        filter: Option<&BooleanArray>,
        total_groups: usize,
    ) -> DfResult<()> {
        if self.ds.len() < total_groups {
            self.ts.resize(total_groups, 0);
            self.ds.resize(total_groups, NONE);
            self.loc.resize(total_groups, (0, 0));
        }
        let mut this: Option<u32> = None;
        for (row, &g) in groups.iter().enumerate() {
            if filter.is_some_and(|f| !f.is_valid(row) || !f.value(row))
                || ts.is_null(row)
                || ds.is_null(row)
                || !candidate(row)
            {
                continue;
            }
            let (t, d) = (ts.value(row), ds.value(row));
            if !self.considers(d) {
                continue;
            }
            let wins = if self.ds[g] == NONE {
                true
            } else {
                match self.rank(t, d, self.ts[g], self.ds[g]) {
                    Some(Ordering::Less) => true,
                    Some(Ordering::Greater) | None => false,
                    Some(Ordering::Equal) => {
                        // Same time and dataset: the smaller value wins.
                        let (a, r) = self.loc[g];
                        let cmp = make_comparator(
                            values.as_ref(),
                            self.arrays[a as usize].as_ref(),
                            SortOptions::default(),
                        )?;
                        cmp(row, r as usize) == Ordering::Less
                    }
                }
            };
            if wins {
                let a = *this.get_or_insert_with(|| {
                    self.arrays.push(Arc::clone(values));
                    self.retained += values.len();
                    (self.arrays.len() - 1) as u32
                });
                self.ts[g] = t;
                self.ds[g] = d;
                self.loc[g] = (a, row as u32);
            }
        }
        if self.retained > (2 * total_groups).max(1 << 16) {
            self.compact()?;
        }
        Ok(())
    }

    /// Copy every winner into one array and drop the input arrays.
    fn compact(&mut self) -> DfResult<()> {
        let mut at = Vec::new();
        for g in 0..self.ds.len() {
            if self.ds[g] != NONE {
                let (a, r) = self.loc[g];
                self.loc[g] = (0, at.len() as u32);
                at.push((a as usize, r as usize));
            }
        }
        let refs: Vec<&dyn Array> = self.arrays.iter().map(|a| a.as_ref()).collect();
        let packed = if at.is_empty() {
            new_null_array(&self.data_type, 0)
        } else {
            own(interleave(&refs, &at)?)
        };
        self.retained = packed.len();
        self.arrays = vec![packed];
        Ok(())
    }

    /// The first groups' winners: value, time, dataset.
    fn emit(&mut self, emit_to: EmitTo) -> DfResult<[ArrayRef; 3]> {
        let ts = emit_to.take_needed(&mut self.ts);
        let ds = emit_to.take_needed(&mut self.ds);
        let loc = emit_to.take_needed(&mut self.loc);
        let null = new_null_array(&self.data_type, 1);
        let mut refs: Vec<&dyn Array> = self.arrays.iter().map(|a| a.as_ref()).collect();
        refs.push(null.as_ref());
        let none = refs.len() - 1;
        let at: Vec<(usize, usize)> = ds
            .iter()
            .zip(&loc)
            .map(|(&d, &(a, r))| {
                if d == NONE {
                    (none, 0)
                } else {
                    (a as usize, r as usize)
                }
            })
            .collect();
        let values = if at.is_empty() {
            new_null_array(&self.data_type, 0)
        } else {
            interleave(&refs, &at)?
        };
        let times = TimestampMicrosecondArray::from_iter(
            ts.iter().zip(&ds).map(|(&t, &d)| (d != NONE).then_some(t)),
        )
        .with_timezone("UTC");
        let datasets = UInt32Array::from_iter(ds.iter().map(|&d| (d != NONE).then_some(d)));
        if matches!(emit_to, EmitTo::All) {
            self.arrays.clear();
            self.retained = 0;
        }
        Ok([values, Arc::new(times), Arc::new(datasets)])
    }

    fn size(&self) -> usize {
        self.ts.capacity() * 8
            + self.ds.capacity() * 4
            + self.loc.capacity() * 8
            + self
                .arrays
                .iter()
                .map(|a| a.get_array_memory_size())
                .sum::<usize>()
    }
}

/// An array that owns its bytes: string views are garbage-collected so that a
/// compacted winner array does not keep every input batch's buffers alive.
fn own(a: ArrayRef) -> ArrayRef {
    match a.data_type() {
        DataType::Utf8View => Arc::new(a.as_string_view().gc()),
        DataType::BinaryView => Arc::new(a.as_binary_view().gc()),
        DataType::Struct(_) => {
            let s = a.as_struct();
            let children: Vec<ArrayRef> = s.columns().iter().map(|c| own(Arc::clone(c))).collect();
            match StructArray::try_new(s.fields().clone(), children, s.nulls().cloned()) {
                Ok(s) => Arc::new(s),
                Err(_) => a,
            }
        }
        _ => a,
    }
}

/// Whether row `i` of a slot's input has a value: any field, for a field group.
fn has_value(values: &ArrayRef) -> Box<dyn Fn(usize) -> bool + '_> {
    match values.data_type() {
        DataType::Struct(_) => {
            let s = values.as_struct();
            Box::new(move |i| s.is_valid(i) && s.columns().iter().any(|c| c.is_valid(i)))
        }
        _ => Box::new(move |i| values.is_valid(i)),
    }
}

struct WinnersAcc {
    fields: Fields,
    slots: Vec<SlotState>,
}

impl GroupsAccumulator for WinnersAcc {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> DfResult<()> {
        let ts = values[0].as_primitive::<TimestampMicrosecondType>();
        let ds = values[1].as_primitive::<datafusion::arrow::datatypes::UInt32Type>();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let v = &values[2 + i];
            let candidate = has_value(v);
            slot.update(
                ts,
                ds,
                v,
                &candidate,
                group_indices,
                opt_filter,
                total_num_groups,
            )?;
        }
        Ok(())
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> DfResult<()> {
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let v = &values[3 * i];
            let ts = values[3 * i + 1].as_primitive::<TimestampMicrosecondType>();
            let ds = values[3 * i + 2].as_primitive::<datafusion::arrow::datatypes::UInt32Type>();
            // A partial state row is a candidate when it has a winner.
            slot.update(ts, ds, v, &|_| true, group_indices, None, total_num_groups)?;
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> DfResult<ArrayRef> {
        let children = self.state(emit_to)?;
        Ok(Arc::new(StructArray::try_new(
            self.fields.clone(),
            children,
            None,
        )?))
    }

    fn state(&mut self, emit_to: EmitTo) -> DfResult<Vec<ArrayRef>> {
        let mut out = Vec::with_capacity(self.slots.len() * 3);
        for slot in &mut self.slots {
            out.extend(slot.emit(emit_to)?);
        }
        Ok(out)
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> DfResult<Vec<ArrayRef>> {
        // Each row its own group: its value, time and dataset where it is a candidate.
        let ts = values[0].as_primitive::<TimestampMicrosecondType>();
        let ds = values[1].as_primitive::<datafusion::arrow::datatypes::UInt32Type>();
        let mut out = Vec::with_capacity(self.slots.len() * 3);
        for (i, slot) in self.slots.iter().enumerate() {
            let v = &values[2 + i];
            let candidate = has_value(v);
            let keep = BooleanArray::from_iter((0..v.len()).map(|r| {
                Some(
                    opt_filter.is_none_or(|f| f.is_valid(r) && f.value(r))
                        && ts.is_valid(r)
                        && ds.is_valid(r)
                        && candidate(r)
                        && slot.considers(ds.value(r)),
                )
            }));
            let none = |a: &dyn Array| {
                datafusion::arrow::compute::nullif(a, &datafusion::arrow::compute::not(&keep)?)
            };
            out.push(none(v.as_ref())?);
            out.push(Arc::new(
                none(ts)?
                    .as_primitive::<TimestampMicrosecondType>()
                    .clone()
                    .with_timezone("UTC"),
            ));
            out.push(none(ds)?);
        }
        Ok(out)
    }

    fn size(&self) -> usize {
        self.slots.iter().map(SlotState::size).sum()
    }
}
