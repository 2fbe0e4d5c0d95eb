"""What a handler of game.command sees: the channel, its terms and the batch's outputs."""
from __future__ import annotations

from dataclasses import dataclass

from agents import cashout_service
from streams.events import CommandReply, Message, TermSettled
from streams.processing import Batch
from streams.topics import bet_topic, reply_topic, term_topic
from tables import ChannelState, TermState, channels, terms


@dataclass
class CommandContext:
    batch: Batch
    channel_id: str
    partition: int
    channel_or_none: ChannelState | None
    offset: int = -1             # of the command being handled, on its game.command partition

    @property
    def channel(self) -> ChannelState:
        assert self.channel_or_none is not None
        return self.channel_or_none

    def set_channel(self, channel: ChannelState) -> None:
        self.channel_or_none = channel
        self.save_channel()

    def save_channel(self) -> None:
        self.batch.staged.set(channels, self.channel_id, self.channel)

    def term(self) -> TermState | None:
        """The channel's newest term."""
        term_id = self.channel.current_term_id
        return self.staged_term(term_id) if term_id else None

    def staged_term(self, term_id: str) -> TermState | None:
        return self.batch.staged.get(terms, term_id)

    def save_term(self, term: TermState) -> None:
        self.batch.staged.set(terms, term.term_id, term)

    def delete_term(self, term: TermState) -> None:
        self.batch.staged.delete(terms, term.term_id)

    def emit_term(self, event: Message) -> None:
        self.batch.emit.send(term_topic, self.channel_id, event)

    def emit_bet(self, event: Message) -> None:
        self.batch.emit.send(bet_topic, self.channel_id, event)

    def emit_book(self, event: Message) -> TermSettled | None:
        """Write a cashout book's input (cashout_service.BOOK_EVENTS) on game.bet and apply it to
        the book at once: the book's inputs are exactly that stream, in its order, which is what
        crash-replay rebuilds a term from. The TermSettled when `event` sealed the term."""
        self.emit_bet(event)
        return cashout_service.apply(self.batch, event)

    def reply(self, reply: CommandReply) -> None:
        if reply.gateway_id:
            self.batch.emit.send(reply_topic, reply.gateway_id, reply)
