"""lxml for the corpus: parse an XML file from the current directory, XPath, XSLT, HTML."""

from lxml import etree, html

XSLT = b"""<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:template match="/"><n><xsl:value-of select="count(//book)"/></n></xsl:template>
</xsl:stylesheet>"""


def main():
    tree = etree.parse("books.xml")
    titles = tree.xpath("//book[@year > 2000]/title/text()")
    count = etree.XSLT(etree.fromstring(XSLT))(tree).getroot().text
    links = html.fromstring("<p><a href='/a'>a</a><a href='/b'>b</a></p>").xpath("//a/@href")
    print("lxml", titles, "books", count, "links", links)
    return 0
