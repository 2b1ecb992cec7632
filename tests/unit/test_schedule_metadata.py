from __future__ import annotations

from dicomcloud.domain.layout import SeriesKey
from dicomcloud.domain.messages import DicomStateMeta, InstanceStored, Source, encode
from dicomcloud.ports import Record
from dicomcloud.usecases.schedule_metadata import MetadataSchedule


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


A = SeriesKey("default", "1.2.3", "1.2.3.1")
B = SeriesKey("default", "1.2.3", "1.2.3.2")


def test_a_series_is_due_once_quiet() -> None:
    clock = Clock()
    schedule = MetadataSchedule(0.5, 2.0, clock)
    schedule.note(A)
    clock.now += 0.3
    assert schedule.due() == []
    schedule.note(A)  # another instance: the quiet period starts again
    clock.now += 0.4
    assert schedule.due() == []
    clock.now += 0.1
    assert schedule.due() == [A]
    assert schedule.due() == []  # it left the schedule
    assert len(schedule) == 0


def test_a_busy_series_is_built_at_the_latest_after_max_delay() -> None:
    clock = Clock()
    schedule = MetadataSchedule(0.5, 2.0, clock)
    schedule.note(B)
    for _ in range(9):  # an instance every 0.2 s: never quiet
        clock.now += 0.2
        schedule.note(B)
        assert schedule.due() == []
    clock.now += 0.2
    assert schedule.due() == [B]


async def test_handler_notes_state_changes_and_dead_letters_the_rest() -> None:
    clock = Clock()
    schedule = MetadataSchedule(0.0, 0.0, clock)
    state = DicomStateMeta("default", "P", A.study_instance_uid, A.series_instance_uid, 3, 3, 1, 3, "CT", "now")
    stored = InstanceStored(
        "default", "1.2", "1.2.1", "1.2.1.1", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", "P",
        "x.dcm", "default/x.dcm", 1, "now", Source("stow"),
    )  # fmt: skip
    records = [
        Record("dicom_state_queue", "k", encode(state), 0, 0),
        Record("dicom_state_queue", "k", encode(stored), 0, 1),
        Record("dicom_state_queue", "k", b"not json", 0, 2),
    ]
    dead = await schedule.handle(records)
    assert [d.record.offset for d in dead] == [1, 2]
    assert schedule.due() == [A]
