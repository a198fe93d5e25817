"""A result as cache entry bytes, and back into ordinary persistent objects of a Session.

An entry holds plain column values, never objects: the rows (values, and
references to objects), and a table of the objects they reference, each as its
class, primary key, the column attributes that were loaded and the
relationships that were loaded (as references). Attributes that were not
loaded (deferred columns, lazy relationships) are not in the entry, and come
back unloaded: using them later loads them from the database as usual.

Rebuilding follows what the ORM does with a row: an identity already in the
Session is used as it is (its unloaded attributes are filled in, its loaded and
changed ones left alone); a new identity becomes a persistent, clean instance
in the Session's identity map, as if just loaded, and InstanceEvents.load fires.
"""

import msgpack
from sqlalchemy.orm.attributes import instance_state, set_committed_value

from ferric_sqlalchemy import orm_internals
from ferric_sqlalchemy.catalog import mapper_name

FORMAT = 2
#: First byte of every entry value: the header format (then the signature, the generations, the entry).
HEADER_FORMAT = b"\x03"


def header(signature: bytes, generations) -> bytes:
    """What an entry's value starts with: the format, the signature of its dependency keys (16 bytes) and the
    generation tokens it was computed under (msgpack). A reader builds the same bytes from the generations it
    reads now: the entry is served only if its value starts with them (tokens are never reused)."""
    return HEADER_FORMAT + signature + msgpack.packb(generations)


class NotStorable(Exception):
    """This result cannot be cached (the message says why); it is still returned to the caller."""


class CorruptEntry(Exception):
    """Entry bytes this process cannot use (another version, a class it does not map): treated as a miss."""


def _mapped_state(value):
    """The InstanceState of a mapped object, else None."""
    try:
        return instance_state(value)
    except Exception:  # not an instrumented object: a plain value
        return None


def encode(codec, catalog, keys, attributes, rows, fresh, stamp=None) -> bytes:
    """Entry bytes for ``rows`` (tuples of plain values and mapped objects); NotStorable if it cannot be exact."""
    objects: list = []
    positions: dict = {}
    pending: list = []

    def reference(obj) -> int:
        state = instance_state(obj)
        position = positions.get(state)
        if position is None:
            if state not in fresh:
                raise NotStorable(f"{state_label(state)} was already in the Session, so its values may be older "
                                  "than this query or not yet flushed")
            if state.identity_token is not None:
                raise NotStorable("objects with an identity token (horizontal sharding) are not cached")
            if catalog.settings(state.mapper) is None:
                raise NotStorable(f"{state.mapper.class_.__name__} is not @cacheable")
            position = positions[state] = len(objects)
            objects.append(None)
            pending.append(state)
        return position

    # A column holds mapped objects in every row or in none (None aside): say which, and store positions there.
    width = len(rows[0]) if rows else 0
    entity_columns = [any(_mapped_state(row[i]) is not None for row in rows) for i in range(width)]
    out_rows = []
    for row in rows:
        out_rows.append([cell if not entity or cell is None else reference(cell)
                         for cell, entity in zip(row, entity_columns)])
    while pending:
        state = pending.pop()
        mapper, values = state.mapper, state.dict
        columns = {prop.key: values[prop.key] for prop in mapper.column_attrs if prop.key in values}
        relations: dict[str, object] = {}
        for prop in mapper.relationships:
            if prop.key not in values:
                continue
            value = values[prop.key]
            if value is None:
                relations[prop.key] = None
            elif prop.uselist:
                members = value.values() if isinstance(value, dict) else value
                relations[prop.key] = [reference(member) for member in members]
            else:
                relations[prop.key] = reference(value)
        objects[positions[state]] = [mapper_name(mapper), list(state.identity), columns, relations]
    return codec.dumps([FORMAT, list(keys), dict(attributes), entity_columns, out_rows, objects, stamp])


def state_label(state) -> str:
    return f"{state.mapper.class_.__name__}{tuple(state.identity or ())}"


def decode(codec, data: bytes, offset: int = 0):
    """``(keys, attributes, entity_columns, rows, objects, stamp)`` of entry bytes from ``offset`` (past the
    header); CorruptEntry if unusable."""
    try:
        version, *fields = codec.loads(memoryview(data)[offset:] if offset else data)
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptEntry(str(exc)) from None
    if version != FORMAT or len(fields) != 6:
        raise CorruptEntry(f"entry format {version}, this process reads {FORMAT}")
    return fields


def rebuild(session, catalog, entity_columns, rows, objects, own_listener=None):
    """The rows with positions in ``entity_columns`` replaced by persistent instances of ``session``;
    returns (rows, instances). ``own_listener``: a load listener not to call (the cache's own)."""
    instances = []
    new = {}  # mapper -> [(state, dict, identity key), ...] of the instances made here
    identity_map = session.identity_map
    mappers = catalog.mappers
    last_name = mapper = manager = None
    for name, identity, columns, _relations in objects:
        if name != last_name:  # a result's objects are mostly of one class
            mapper = mappers.get(name)
            if mapper is None:
                raise CorruptEntry(f"no single cacheable class is named {name} in this process")
            last_name, manager = name, mapper.class_manager
        key = mapper.identity_key_from_primary_key(identity)
        existing = identity_map.get(key)
        if existing is not None:
            state = instance_state(existing)
            unloaded = state.unloaded
            for attribute, value in columns.items():
                if attribute in unloaded:
                    set_committed_value(existing, attribute, value)
            instances.append(existing)
        else:
            obj = manager.new_instance()
            dict_ = obj.__dict__
            dict_.update(columns)
            instances.append(obj)
            made = new.get(mapper)
            if made is None:
                made = new[mapper] = []
            made.append((instance_state(obj), dict_, key))
    if any(entry[3] for entry in objects):  # loaded relationships to set, once every object exists
        fresh_objects = {id(state.obj()) for made in new.values() for state, _, _ in made}
        for obj, (_name, _identity, _columns, relations) in zip(instances, objects):
            unloaded = None if id(obj) in fresh_objects else instance_state(obj).unloaded
            for attribute, value in relations.items():
                if unloaded is not None and attribute not in unloaded:
                    continue
                if type(value) is int:
                    value = instances[value]
                elif value is not None:
                    value = [instances[member] for member in value]
                set_committed_value(obj, attribute, value)
    for made_mapper, made in new.items():
        orm_internals.register_loaded_many(session, made_mapper, made)
    for made_mapper, made in new.items():  # InstanceEvents.load once every instance is in the Session
        orm_internals.fire_load_many(made_mapper, made, own_listener)
    if entity_columns == [True]:  # the common case, rows of one entity
        return [(instances[position],) for position, in rows], instances
    out_rows = [tuple(instances[cell] if entity and cell is not None else cell
                      for cell, entity in zip(row, entity_columns)) for row in rows]
    return out_rows, instances
