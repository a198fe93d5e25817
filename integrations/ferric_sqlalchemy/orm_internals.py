"""The few SQLAlchemy internals the cache needs, in one place (checked against SQLAlchemy 2.0 and 2.1).

The cache hooks into SQLAlchemy only through its event API. To hand back a
result without running the statement it must build the same kind of Result the
ORM builds, which is what ``sqlalchemy.orm.loading.merge_frozen_result`` (the
documented way to re-serve a result) does with these same internals; and to
put a cached row into a Session as if it had been loaded, it does what
``Session.merge(load=False)`` does for a new instance. Everything here falls
back to "not cached" rather than guessing if an internal is not as expected.
"""

from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.orm import context as orm_context


def for_update(statement) -> bool:
    """True for SELECT ... FOR UPDATE / FOR SHARE (row locks must come from the database)."""
    return getattr(statement, "_for_update_arg", None) is not None


def result_shape(statement, only_return_tuples=False):
    """``(keys, extras, attributes)`` of the Result the ORM would build for ``statement``.

    As merge_frozen_result computes them: one key and its extra lookup objects
    (the entity, the column) per selected entity; ``attributes`` are the flags
    legacy ``Query`` reads (``filtered``: mapped entities, deduplicated by
    ``Query.all``; ``is_single_entity``: rows are returned as scalars).
    """
    entities = orm_context._ORMSelectCompileState._create_entities_collection(statement, legacy=False)._entities
    keys = [entity._label_name for entity in entities]
    extras = [entity._extra_entities for entity in entities]
    mapped = [isinstance(entity, orm_context._MapperEntity) for entity in entities]
    single = (not only_return_tuples and len(entities) == 1 and entities[0].supports_single_entity)
    return keys, extras, {"filtered": any(mapped), "is_single_entity": single}


def _hash_or_id(value):
    try:
        return hash(value)
    except TypeError:  # a dict or list from a JSON column: unique by identity, as the ORM does
        return id(value)


def _unique_filters(result):
    return [_hash_or_id] * len(result._metadata._keys)


def result_metadata(keys, extras):
    """The metadata of such a Result; immutable, so one serves every result of a statement shape."""
    return SimpleResultMetaData(keys, extra=extras, _create_unique_filters=_unique_filters)


def build_result(metadata, attributes, rows):
    """A Result over ``rows`` (tuples) that behaves as the ORM's: scalars(), unique(), mappings(), legacy Query."""
    result = IteratorResult(metadata, iter(rows))
    result._attributes = result._attributes.union(attributes)
    return result


def requires_unique(result) -> bool:
    """True when the ORM insists on ``.unique()`` (joined eager loading of a collection)."""
    state = getattr(result, "_unique_filter_state", None)
    return state is not None and state[1] is not None


def only_return_tuples(orm_execute_state) -> bool:
    return bool(getattr(orm_execute_state.load_options, "_only_return_tuples", False))


def new_instance(mapper):
    """An empty instance of the mapped class with its instance state, as the ORM makes one before loading a row."""
    return mapper.class_manager.new_instance()


def register_loaded(session, state, key) -> None:
    """Make a new instance, its loaded attributes already in ``state.dict``, persistent in ``session``.

    What ``loading._instance`` does for a row of a new identity (key, session,
    identity map), where ``make_transient_to_detached`` +
    ``Session.add`` would also walk every relationship's cascade. Column
    attributes the entry lacks (deferred by a query option) are expired so that
    using them loads them, as make_transient_to_detached does; columns the
    mapper defers and unloaded relationships keep their own loaders.
    """
    dict_ = state.dict
    state.key = key
    state.session_id = session.hash_key
    session.identity_map._add_unpresent(state, key)
    # The values went into the dict without attribute events: there is no history to commit.
    missing = [name for name in _eager_column_keys(state.mapper) if name not in dict_]
    if missing:
        state._expire_attributes(dict_, missing)
    if session.dispatch.loaded_as_persistent:
        session.dispatch.loaded_as_persistent(session, state)


def register_loaded_many(session, mapper, loaded) -> None:
    """``register_loaded`` for many new instances of one mapper: ``loaded`` is ``[(state, dict_, key), ...]``.
    Per instance it does only what must be done per instance; the lookups are made once."""
    hash_key = session.hash_key
    add = session.identity_map._add_unpresent
    eager = _eager_column_set(mapper)
    loaded_as_persistent = session.dispatch.loaded_as_persistent
    for state, dict_, key in loaded:
        state.key = key
        state.session_id = hash_key
        add(state, key)
        if not dict_.keys() >= eager:  # a column the query deferred: expired, so that using it loads it
            state._expire_attributes(dict_, [name for name in _eager_column_keys(mapper) if name not in dict_])
        if loaded_as_persistent:
            loaded_as_persistent(session, state)


def fire_load_many(mapper, loaded, skip=None) -> None:
    """``fire_load`` for the instances ``register_loaded_many`` registered, leaving out the listener ``skip``
    (the cache's own, which has nothing to do for instances built from the cache)."""
    load = mapper.class_manager.dispatch.load
    if not load:
        return
    listeners = [fn for fn in load if fn != skip]  # in the order the event calls them
    if listeners:
        for state, _, _ in loaded:
            for fn in listeners:
                fn(state, None)


_EAGER_COLUMNS: dict = {}
_EAGER_COLUMN_SETS: dict = {}


def _eager_column_keys(mapper) -> tuple:
    """Column attributes the mapper loads with its rows (not ``deferred``)."""
    keys = _EAGER_COLUMNS.get(mapper)
    if keys is None:
        keys = _EAGER_COLUMNS[mapper] = tuple(prop.key for prop in mapper.column_attrs if not prop.deferred)
    return keys


def _eager_column_set(mapper) -> frozenset:
    keys = _EAGER_COLUMN_SETS.get(mapper)
    if keys is None:
        keys = _EAGER_COLUMN_SETS[mapper] = frozenset(_eager_column_keys(mapper))
    return keys


def fire_load(state) -> None:
    """Fire InstanceEvents.load (and so @reconstructor) for an instance built from cache, as merge(load=False) does."""
    dispatch = state.manager.dispatch
    if dispatch.load:
        dispatch.load(state, None)


def has_pending_changes(session) -> bool:
    """True if the Session holds new, changed or deleted objects not yet flushed (what autoflush would write)."""
    is_clean = getattr(session, "_is_clean", None)
    if is_clean is not None:
        return not is_clean()
    return bool(session.new or session.dirty or session.deleted)


def listeners_after(orm_execute_state) -> list:
    """The do_orm_execute listeners that will run after the current one (they may still rewrite the statement)."""
    remaining = getattr(orm_execute_state, "_remaining_events", None)
    return list(remaining()) if remaining is not None else []


def core_statement(compiled):
    """The Core statement a Compiled actually rendered (for an ORM select: with its eager joins and criteria)."""
    compile_state = getattr(compiled, "compile_state", None)
    statement = getattr(compile_state, "statement", None)
    return statement if statement is not None else compiled.statement
